package kube

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	uidA = "0e2b6a3c-4f1d-4c5e-9a7b-1c2d3e4f5a6b"
	uidB = "11111111-2222-4333-8444-555555555555"
	uidC = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
	// uidD's systemd and cgroupfs names start with uidPrefix's: a
	// lookup by prefix would confuse them.
	uidPrefix = "deadbeef-0000-4000-8000-00000000000"
	uidD      = uidPrefix + "1"
)

func systemdUID(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

// mkdirs creates each path (relative to root) as a directory.
func mkdirs(t *testing.T, root string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPodUID(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"kubepods-burstable-pod" + systemdUID(uidA) + ".slice", uidA},
		{"kubepods-besteffort-pod" + systemdUID(uidA) + ".slice", uidA},
		{"kubepods-pod" + systemdUID(uidA) + ".slice", uidA},
		{"kubelet-kubepods-burstable-pod" + systemdUID(uidA) + ".slice", uidA},
		{"pod" + uidA, uidA},
		{"pod0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"}, // a static pod's hash
		// Not pod cgroups.
		{"kubepods.slice", ""},
		{"kubepods-burstable.slice", ""},
		{"kubepods", ""},
		{"burstable", ""},
		{"pod", ""},
		{"podman", ""},
		{"pod" + systemdUID(uidA), ""}, // cgroupfs names keep the dashes
		{"kubepods-burstable-pod" + uidA + ".slice", ""},   // systemd names have none
		{"system-pod" + systemdUID(uidA) + ".slice", ""},   // not kubelet's
		{"kubepods-pod" + systemdUID(uidA) + ".scope", ""}, // not a slice
		{"cri-containerd-" + strings.Repeat("ab", 32) + ".scope", ""},
		{strings.Repeat("ab", 32), ""}, // a cgroupfs container
		{"pod" + strings.ToUpper(uidA), ""},
	} {
		if got := podUID(tc.name); got != tc.want {
			t.Errorf("podUID(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// Pod cgroups are found in both layouts, every QoS class, below a
// kubelet --cgroup-root and up to four levels below the root; containers
// and decoys are not taken for pods.
func TestPodCgroupsLayouts(t *testing.T) {
	ctr := strings.Repeat("0f", 32)
	for _, tc := range []struct {
		name  string
		dirs  []string
		want  map[string]string // uid → path relative to the root
		under string            // the root, relative to the temporary directory
	}{
		{
			name: "systemd",
			dirs: []string{
				"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + systemdUID(uidA) + ".slice/cri-containerd-" + ctr + ".scope",
				"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + systemdUID(uidB) + ".slice/crio-" + ctr + ".scope",
				"kubepods.slice/kubepods-pod" + systemdUID(uidC) + ".slice/docker-" + ctr + ".scope",
				"kubepods.slice/kubepods-pod" + systemdUID(uidD) + ".slice",
				"system.slice/containerd.service",
				"system.slice/kubepods-pod" + systemdUID(uidPrefix) + "2.slice", // not below kubepods
			},
			want: map[string]string{
				uidA: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + systemdUID(uidA) + ".slice",
				uidB: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + systemdUID(uidB) + ".slice",
				uidC: "kubepods.slice/kubepods-pod" + systemdUID(uidC) + ".slice",
				uidD: "kubepods.slice/kubepods-pod" + systemdUID(uidD) + ".slice",
			},
		},
		{
			name: "cgroupfs",
			dirs: []string{
				"kubepods/burstable/pod" + uidA + "/" + ctr,
				"kubepods/besteffort/pod" + uidB + "/" + ctr,
				"kubepods/pod" + uidC + "/" + ctr,
				"kubepods/pod" + uidD,
				"kubepods/burstable/pod" + uidPrefix + "2/pod" + uidPrefix + "3", // a pod's child is no pod
				"other/pod" + uidPrefix + "4",                                    // not below kubepods
			},
			want: map[string]string{
				uidA:            "kubepods/burstable/pod" + uidA,
				uidB:            "kubepods/besteffort/pod" + uidB,
				uidC:            "kubepods/pod" + uidC,
				uidD:            "kubepods/pod" + uidD,
				uidPrefix + "2": "kubepods/burstable/pod" + uidPrefix + "2",
			},
		},
		{
			name: "a kubelet --cgroup-root, four levels down",
			dirs: []string{
				"a/b/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod" + systemdUID(uidA) + ".slice",
				"a/b/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + systemdUID(uidC) + ".slice",
				"a/b/c/d/kubepods/pod" + uidB, // five levels: too deep
			},
			want: map[string]string{
				uidA: "a/b/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod" + systemdUID(uidA) + ".slice",
				uidC: "a/b/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + systemdUID(uidC) + ".slice",
			},
		},
		{
			name:  "the root is the kubepods directory",
			under: "kubepods",
			dirs:  []string{"kubepods/burstable/pod" + uidA},
			want:  map[string]string{uidA: "burstable/pod" + uidA},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			mkdirs(t, dir, tc.dirs...)
			root := filepath.Join(dir, tc.under)
			c := &podCgroups{root: root, now: time.Now}
			got := c.find([]string{uidA, uidB, uidC, uidD, uidPrefix, uidPrefix + "2", uidPrefix + "3", uidPrefix + "4"})
			want := map[string]string{}
			for uid, p := range tc.want {
				want[uid] = filepath.Join(root, p)
			}
			if !maps.Equal(got, want) {
				t.Errorf("found %v\nwant %v", got, want)
			}
		})
	}
}

// A pod whose cgroup appears later is found at once under a known
// kubepods directory; a kubepods directory that appears later is found
// at the next discovery; a removed cgroup is not reported; a recreated
// one is.
func TestPodCgroupsChanges(t *testing.T) {
	root := t.TempDir()
	now := time.Unix(1000, 0)
	c := &podCgroups{root: root, now: func() time.Time { return now }}
	mkdirs(t, root, "kubepods/burstable")

	if got := c.find([]string{uidA}); len(got) != 0 {
		t.Fatalf("found %v before any pod cgroup exists", got)
	}
	podA := filepath.Join(root, "kubepods/burstable/pod"+uidA)
	mkdirs(t, root, "kubepods/burstable/pod"+uidA)
	if got := c.find([]string{uidA}); got[uidA] != podA {
		t.Fatalf("a pod cgroup created later: found %v, want %s", got, podA)
	}

	// A second kubepods tree is seen at once for a pod newly missing, and
	// for one still missing once rediscovery is due.
	if got := c.find([]string{uidA, uidB}); got[uidB] != "" {
		t.Fatalf("found %v before pod B's cgroup exists", got)
	}
	sysB := "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + systemdUID(uidB) + ".slice"
	mkdirs(t, root, sysB)
	if got := c.find([]string{uidA, uidB}); got[uidB] != "" {
		t.Fatalf("rediscovered before %v passed: %v", rediscoverEvery, got)
	}
	now = now.Add(rediscoverEvery)
	if got := c.find([]string{uidA, uidB}); got[uidA] != podA || got[uidB] != filepath.Join(root, sysB) {
		t.Fatalf("after rediscovery: found %v", got)
	}
	sysC := "k/kubepods.slice/kubepods-pod" + systemdUID(uidC) + ".slice"
	mkdirs(t, root, sysC)
	if got := c.find([]string{uidA, uidB, uidC}); got[uidC] != filepath.Join(root, sysC) {
		t.Fatalf("a pod newly missing under a new kubepods tree: found %v", got)
	}

	if err := os.Remove(podA); err != nil {
		t.Fatal(err)
	}
	if got := c.find([]string{uidA}); len(got) != 0 {
		t.Fatalf("found %v after the pod cgroup was removed", got)
	}
	mkdirs(t, root, "kubepods/burstable/pod"+uidA)
	if got := c.find([]string{uidA}); got[uidA] != podA {
		t.Fatalf("a recreated pod cgroup: found %v, want %s", got, podA)
	}
}
