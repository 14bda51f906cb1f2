package kube

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestExecName(t *testing.T) {
	for pkg, want := range map[string]string{
		"k8s.io/kubernetes/cmd/kube-apiserver": "kube-apiserver",
		"go.etcd.io/etcd/server/v3":            "server",
		"example.com/tool/v2beta":              "v2beta",
		"example.com/v2":                       "example.com",
	} {
		if got := execName(pkg); got != want {
			t.Errorf("execName(%q) = %q, want %q", pkg, got, want)
		}
	}
}

// TestToolsModule checks the versions are read from the tools module as it
// is and end up in the binaries' version variables.
func TestToolsModule(t *testing.T) {
	gomod, err := os.ReadFile(filepath.Join("tools", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := toolsVersions(gomod)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v.Kubernetes, "v1.") || !strings.HasPrefix(v.Etcd, "v3.") {
		t.Fatalf("tools module versions %+v, want kubernetes v1.x and etcd v3.x", v)
	}
	// Every staging module is replaced by its release matching kubernetes.
	staging := "v0" + strings.TrimPrefix(v.Kubernetes, "v1")
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[1] == "=>" && strings.HasPrefix(f[0], "k8s.io/") && f[3] != staging {
			t.Errorf("tools go.mod: %s, want %s", strings.TrimSpace(line), staging)
		}
	}

	args, err := buildArgs(v, "out")
	if err != nil {
		t.Fatal(err)
	}
	ldflags := args[slices.IndexFunc(args, func(a string) bool { return strings.HasPrefix(a, "-ldflags=") })]
	minor := strings.Split(v.Kubernetes, ".")[1]
	for _, want := range []string{
		"k8s.io/component-base/version.gitVersion=" + v.Kubernetes,
		"k8s.io/component-base/version.gitMajor=1",
		"k8s.io/component-base/version.gitMinor=" + minor,
	} {
		if !strings.Contains(ldflags, want) {
			t.Errorf("build flags %q lack %s", ldflags, want)
		}
	}

	if _, err := toolsVersions([]byte("module x\n\nrequire k8s.io/kubernetes v1.36.3\n")); err == nil {
		t.Error("toolsVersions accepted a go.mod without etcd")
	}
	if _, err := buildArgs(Versions{Kubernetes: "latest", Etcd: "v3.6.16"}, "out"); err == nil {
		t.Error(`buildArgs accepted kubernetes version "latest"`)
	}
}

// TestBinariesWithoutProxy checks that an empty cache with no way to
// download modules is reported as ErrUnavailable (tests skip on it), not as
// a build failure, and leaves nothing in the cache.
func TestBinariesWithoutProxy(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("SLUICE_KUBE_CACHE", cache)
	t.Setenv("GOPROXY", "off")
	t.Setenv("GOMODCACHE", t.TempDir())
	_, err := Binaries(t.Context(), nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Binaries without a module proxy: %v, want ErrUnavailable", err)
	}
	t.Log(err)
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("cache has %s after a failed build", e.Name())
		}
	}
}

// TestLockFile checks the cache lock excludes a second holder, even in the
// same process, until released.
func TestLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	unlock, err := lockFile(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	if unlock2, err := lockFile(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			unlock2()
		}
		t.Fatalf("second lock while held: %v, want it to wait until the deadline", err)
	}
	unlock()
	unlock2, err := lockFile(t.Context(), path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	unlock2()
}
