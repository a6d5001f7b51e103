"""Validators generated from conf/schema by build/gen_validators.py."""
