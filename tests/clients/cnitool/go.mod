module underlay.invalid/tests/clients/cnitool

go 1.19

require github.com/containernetworking/cni v1.1.2

// Debian's golang-github-appc-cni-dev: builds offline (GOPROXY=off).
// libcni's own requirements (ginkgo, gomega) are test-only and never loaded.
replace github.com/containernetworking/cni => /usr/share/gocode/src/github.com/containernetworking/cni
