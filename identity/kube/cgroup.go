package kube

import (
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Where and how often podCgroups looks for kubelet's pod cgroups.
const (
	// kubepodsDepth is how deep below the root a kubepods directory may
	// be: kubelets nested in containers or given a --cgroup-root put it
	// below other cgroups (kubelet.slice/kubelet-kubepods.slice).
	kubepodsDepth = 4
	// rediscoverEvery bounds how often a pod still not found makes
	// podCgroups walk the root again for kubepods directories, the one
	// costly step. A pod newly missing makes it walk at once.
	rediscoverEvery = 5 * time.Second
)

// podCgroups finds pod cgroups by pod UID under a root directory, in both
// kubelet layouts:
//
//	systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '_' for '-'>.slice
//	          kubepods.slice/kubepods-pod<uid>.slice (guaranteed)
//	cgroupfs: kubepods/besteffort/pod<uid>, kubepods/pod<uid> (guaranteed)
//
// It walks the tree only to find the kubepods directories (up to
// kubepodsDepth below the root): at first, when a pod is newly missing,
// and at most every rediscoverEvery while pods stay missing. Otherwise it
// lists those and their QoS directories when a pod is not in its cache,
// and checks that cached paths still exist.
// It is not safe for concurrent use.
type podCgroups struct {
	root string
	now  func() time.Time

	kubepods   []string          // kubepods directories found by the last discovery
	discovered time.Time         // of the last discovery; zero before the first
	byUID      map[string]string // pod UID → pod cgroup, from the last scan
	missed     map[string]bool   // the UIDs the last find did not find
}

// find returns the pod cgroups of those of uids that have one, by UID.
func (c *podCgroups) find(uids []string) map[string]string {
	out := make(map[string]string, len(uids))
	var missing []string
	newlyMissing := false
	for _, uid := range uids {
		if p, ok := c.byUID[uid]; ok && isDir(p) {
			out[uid] = p
		} else {
			missing = append(missing, uid)
			newlyMissing = newlyMissing || !c.missed[uid]
		}
	}
	if len(missing) == 0 {
		c.missed = nil
		return out
	}
	if newlyMissing || c.discovered.IsZero() || c.now().Sub(c.discovered) >= rediscoverEvery {
		c.discover()
	}
	c.scan()
	c.missed = make(map[string]bool, len(missing))
	for _, uid := range missing {
		if p, ok := c.byUID[uid]; ok {
			out[uid] = p
		} else {
			c.missed[uid] = true
		}
	}
	return out
}

// discover finds the kubepods directories under the root. The pod and
// container cgroups below them are not walked.
func (c *podCgroups) discover() {
	c.discovered = c.now()
	c.kubepods = c.kubepods[:0]
	if isKubepods(filepath.Base(c.root)) {
		c.kubepods = append(c.kubepods, c.root)
		return
	}
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		for _, name := range subdirs(dir) {
			p := filepath.Join(dir, name)
			switch {
			case isKubepods(name):
				c.kubepods = append(c.kubepods, p)
			case podUID(name) == "" && depth < kubepodsDepth:
				walk(p, depth+1)
			}
		}
	}
	walk(c.root, 1)
}

// scan lists the pod cgroups below the kubepods directories, directly
// (guaranteed pods) or in a QoS class directory. When a UID has two (a
// leftover of another layout), the first in lexical order is kept.
func (c *podCgroups) scan() {
	c.byUID = make(map[string]string, len(c.byUID))
	add := func(dir string) {
		for _, name := range subdirs(dir) {
			if uid := podUID(name); uid != "" {
				if _, dup := c.byUID[uid]; !dup {
					c.byUID[uid] = filepath.Join(dir, name)
				}
			}
		}
	}
	for _, k := range c.kubepods {
		add(k)
		for _, name := range subdirs(k) {
			if isQoS(name) {
				add(filepath.Join(k, name))
			}
		}
	}
}

// isKubepods reports whether a directory named name holds kubelet's pod
// cgroups: kubepods, kubepods.slice, or, under a kubelet --cgroup-root,
// e.g. kubelet-kubepods.slice. QoS and pod directories (whose names
// contain "kubepods" in the systemd layout) are not.
func isKubepods(name string) bool {
	return (name == "kubepods" || strings.HasSuffix(name, "kubepods.slice")) && podUID(name) == ""
}

// isQoS reports whether a directory below a kubepods directory is a QoS
// class's: besteffort, burstable (guaranteed pods have none).
func isQoS(name string) bool {
	switch name {
	case "besteffort", "burstable", "kubepods-besteffort.slice", "kubepods-burstable.slice":
		return true
	}
	return strings.HasSuffix(name, "-kubepods-besteffort.slice") || strings.HasSuffix(name, "-kubepods-burstable.slice")
}

// podUID returns the pod UID a pod cgroup's directory name carries, or ""
// if name is no pod cgroup's: "pod<uid>" (cgroupfs) or
// "<...kubepods...>-pod<uid with '_' for '-'>.slice" (systemd).
func podUID(name string) string {
	if rest, ok := strings.CutSuffix(name, ".slice"); ok {
		i := strings.LastIndex(rest, "-pod")
		if i < 0 || !strings.Contains(rest[:i], "kubepods") || !isUID(rest[i+4:], '_') {
			return ""
		}
		return strings.ReplaceAll(rest[i+4:], "_", "-")
	}
	if uid, ok := strings.CutPrefix(name, "pod"); ok && isUID(uid, '-') {
		return uid
	}
	return ""
}

// isUID reports whether s can be a pod UID as kubelet writes it in cgroup
// names: lowercase hex digits, in groups separated by sep (a UUID from the
// API server, or a static pod's hash, which has none).
func isUID(s string, sep byte) bool {
	if s == "" || s[0] == sep || s[len(s)-1] == sep {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == sep) {
			return false
		}
	}
	return true
}

// subdirs returns the names of dir's subdirectories, sorted; none if dir
// cannot be read (it went, or is no directory).
func subdirs(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
