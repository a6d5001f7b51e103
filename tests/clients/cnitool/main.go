// Command cnitool is the test suite's libcni driver: cnitool's verbs and
// environment on top of the libcni that Debian ships (golang-github-appc-cni-dev).
//
//	cnitool add|check|del <net> <netns>
//	cnitool gc|status <net> [netns]
//	cnitool version
//
// Environment, as cnitool: NETCONFPATH (default /etc/cni/net.d), CNI_PATH,
// CAP_ARGS (JSON object), CNI_ARGS (K=V;K=V), CNI_IFNAME (default eth0).
// Extensions for the tests:
//
//	CNI_CONTAINERID        container ID (cnitool derives it from the netns path)
//	CNI_CACHE_DIR          libcni's cache dir (default /var/lib/cni), so tests
//	                       never share /var/lib/cni/results
//	CNI_VALID_ATTACHMENTS  gc: the runtime's live attachments, JSON
//	                       [{"containerID","ifname"}]; default: every attachment
//	                       of <net> in libcni's cache
//
// Debian 12 ships libcni 1.1.2 (spec up to 1.0.0). It has no GC, no STATUS and
// ignores `cniVersions`; those three are backported here from libcni 1.2
// (GCNetworkList, GetStatusNetworkList, NetworkConfFromBytes), built only
// from libcni's public API and its on-disk cache, so a runtime on a newer
// libcni sends exactly what this driver sends.
//
// Success: ADD prints the result (in the list's version); other verbs print
// nothing. Failure: exit 1, stdout {"error": msg, "code": CNI code or 0}.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	envCNIPath          = "CNI_PATH"
	envNetDir           = "NETCONFPATH"
	envCapabilityArgs   = "CAP_ARGS"
	envCNIArgs          = "CNI_ARGS"
	envCNIIfname        = "CNI_IFNAME"
	envContainerID      = "CNI_CONTAINERID"
	envCacheDir         = "CNI_CACHE_DIR"
	envValidAttachments = "CNI_VALID_ATTACHMENTS"

	defaultNetDir = "/etc/cni/net.d"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Printf("{\"libcni\": %q}\n", version.Current())
		return
	}
	if len(os.Args) < 3 {
		usage()
	}
	verb, netName := os.Args[1], os.Args[2]
	netdir := os.Getenv(envNetDir)
	if netdir == "" {
		netdir = defaultNetDir
	}
	list, err := libcni.LoadConfList(netdir, netName)
	if err != nil {
		fail(err)
	}
	if err := negotiateVersion(list); err != nil {
		fail(err)
	}
	cacheDir := os.Getenv(envCacheDir)
	cninet := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv(envCNIPath)), cacheDir, nil)
	ctx := context.Background()

	switch verb {
	case "status":
		fail(statusNetworkList(ctx, cninet, list))
		return
	case "gc":
		valid, err := validAttachments(cacheDir, list.Name)
		if err != nil {
			fail(err)
		}
		fail(gcNetworkList(ctx, cninet, cacheDir, list, valid))
		return
	case "add", "check", "del":
	default:
		usage()
	}

	if len(os.Args) < 4 {
		usage()
	}
	rt, err := runtimeConf(os.Args[3])
	if err != nil {
		fail(err)
	}
	switch verb {
	case "add":
		result, err := cninet.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.Print(); err != nil {
			fail(err)
		}
	case "check":
		fail(cninet.CheckNetworkList(ctx, list, rt))
	case "del":
		fail(cninet.DelNetworkList(ctx, list, rt))
	}
}

func usage() {
	exe := filepath.Base(os.Args[0])
	fmt.Fprintf(os.Stderr, "usage: %s add|check|del <net> <netns>\n       %s gc|status <net> [netns]\n       %s version\n",
		exe, exe, exe)
	os.Exit(2)
}

// fail exits 1 with the error as JSON on stdout; a nil error returns.
func fail(err error) {
	if err == nil {
		return
	}
	out := map[string]interface{}{"error": err.Error(), "code": 0}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out["code"] = cniErr.Code
	}
	data, _ := json.Marshal(out)
	fmt.Println(string(data))
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

// runtimeConf builds what cnitool builds, plus the CNI_CONTAINERID override.
func runtimeConf(netns string) (*libcni.RuntimeConf, error) {
	var capabilityArgs map[string]interface{}
	if value := os.Getenv(envCapabilityArgs); value != "" {
		if err := json.Unmarshal([]byte(value), &capabilityArgs); err != nil {
			return nil, fmt.Errorf("%s: %w", envCapabilityArgs, err)
		}
	}
	var cniArgs [][2]string
	if value := os.Getenv(envCNIArgs); value != "" {
		for _, pair := range strings.Split(value, ";") {
			kv := strings.Split(pair, "=")
			if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
				return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
			}
			cniArgs = append(cniArgs, [2]string{kv[0], kv[1]})
		}
	}
	ifName, ok := os.LookupEnv(envCNIIfname)
	if !ok {
		ifName = "eth0"
	}
	netns, err := filepath.Abs(netns)
	if err != nil {
		return nil, err
	}
	containerID := os.Getenv(envContainerID)
	if containerID == "" {
		sum := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", sum[:10])
	}
	return &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: capabilityArgs,
	}, nil
}

// ---------------------------------------------------------------------------
// Backports from libcni 1.2.

// negotiateVersion: with `cniVersions`, the list's version is the highest of
// cniVersions and cniVersion that this libcni implements.
func negotiateVersion(list *libcni.NetworkConfigList) error {
	var raw struct {
		CNIVersions []string `json:"cniVersions"`
	}
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		return fmt.Errorf("error parsing configuration list: %w", err)
	}
	if raw.CNIVersions == nil {
		return nil
	}
	candidates := append([]string{}, raw.CNIVersions...)
	if list.CNIVersion != "" {
		candidates = append(candidates, list.CNIVersion)
	}
	var usable []string
	for _, v := range candidates {
		newer, err := greaterThan(v, version.Current())
		if err != nil {
			return fmt.Errorf("error parsing configuration list: invalid cniVersions entry %s: %w", v, err)
		}
		if !newer {
			usable = append(usable, v)
		}
	}
	sort.Slice(usable, func(i, j int) bool {
		gt, _ := greaterThan(usable[j], usable[i])
		return gt
	})
	if len(usable) > 0 {
		list.CNIVersion = usable[len(usable)-1]
	}
	return nil
}

func greaterThan(v, other string) (bool, error) {
	if _, _, _, err := version.ParseVersion(v); err != nil {
		return false, err
	}
	ge, err := version.GreaterThanOrEqualTo(other, v)
	return !ge, err
}

// cachedAttachment is the part of libcni's cache entry (kind cniCacheV1,
// <cacheDir>/results/<net>-<containerID>-<ifname>) that GC needs.
type cachedAttachment struct {
	Kind           string                 `json:"kind"`
	ContainerID    string                 `json:"containerId"`
	IfName         string                 `json:"ifName"`
	NetworkName    string                 `json:"networkName"`
	NetNS          string                 `json:"netns"`
	CniArgs        [][2]string            `json:"cniArgs,omitempty"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs,omitempty"`
}

func cachedAttachments(cacheDir, netName string) ([]cachedAttachment, error) {
	if cacheDir == "" {
		cacheDir = libcni.CacheDir
	}
	dir := filepath.Join(cacheDir, "results")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []cachedAttachment
	for _, entry := range entries {
		data, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		if err != nil {
			continue
		}
		var a cachedAttachment
		if json.Unmarshal(data, &a) != nil || a.Kind != libcni.CNICacheV1 {
			continue
		}
		if a.IfName == "" || a.NetworkName != netName {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

type gcAttachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// validAttachments: the runtime's list, else what libcni's cache holds.
func validAttachments(cacheDir, netName string) ([]gcAttachment, error) {
	valid := []gcAttachment{}
	if value, ok := os.LookupEnv(envValidAttachments); ok {
		if err := json.Unmarshal([]byte(value), &valid); err != nil {
			return nil, fmt.Errorf("%s: %w", envValidAttachments, err)
		}
		return valid, nil
	}
	cached, err := cachedAttachments(cacheDir, netName)
	if err != nil {
		return nil, err
	}
	for _, a := range cached {
		valid = append(valid, gcAttachment{a.ContainerID, a.IfName})
	}
	return valid, nil
}

// gcNetworkList: DEL every cached attachment that is not valid, then (1.1.0+)
// GC each plugin with cni.dev/valid-attachments.
func gcNetworkList(ctx context.Context, c *libcni.CNIConfig, cacheDir string, list *libcni.NetworkConfigList, valid []gcAttachment) error {
	cached, err := cachedAttachments(cacheDir, list.Name)
	if err != nil {
		return err
	}
	keep := map[gcAttachment]bool{}
	for _, a := range valid {
		keep[a] = true
	}
	var errs []string
	for _, a := range cached {
		if keep[gcAttachment{a.ContainerID, a.IfName}] {
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.NetNS, IfName: a.IfName,
			Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs}
		if err := c.DelNetworkList(ctx, list, rt); err != nil {
			errs = append(errs, fmt.Sprintf("failed to delete stale attachment %s %s: %v", a.ContainerID, a.IfName, err))
		}
	}
	if atLeast(list.CNIVersion, "1.1.0") {
		inject := map[string]interface{}{
			"name":                      list.Name,
			"cniVersion":                list.CNIVersion,
			"cni.dev/valid-attachments": valid,
		}
		for _, plugin := range list.Plugins {
			if err := execPlugin(ctx, c, "GC", plugin, inject); err != nil {
				errs = append(errs, fmt.Sprintf("failed to GC plugin %s: %v", plugin.Network.Type, err))
			}
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// statusNetworkList: STATUS each plugin (1.1.0+), stopping at the first error.
func statusNetworkList(ctx context.Context, c *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
	if !atLeast(list.CNIVersion, "1.1.0") {
		return nil
	}
	inject := map[string]interface{}{"name": list.Name, "cniVersion": list.CNIVersion}
	for _, plugin := range list.Plugins {
		if err := execPlugin(ctx, c, "STATUS", plugin, inject); err != nil {
			return err
		}
	}
	return nil
}

func execPlugin(ctx context.Context, c *libcni.CNIConfig, verb string, plugin *libcni.NetworkConfig, inject map[string]interface{}) error {
	conf, err := libcni.InjectConf(plugin, inject)
	if err != nil {
		return fmt.Errorf("failed to generate configuration for %s: %w", verb, err)
	}
	path, err := invoke.FindInPath(plugin.Network.Type, c.Path)
	if err != nil {
		return err
	}
	args := &invoke.Args{Command: verb, Path: strings.Join(c.Path, string(os.PathListSeparator))}
	return invoke.ExecPluginWithoutResult(ctx, path, conf.Bytes, args, nil)
}

func atLeast(v, min string) bool {
	ok, _ := version.GreaterThanOrEqualTo(v, min)
	return ok
}
