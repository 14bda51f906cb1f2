package testenv_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// A tool is found in PATH, else where `go install` puts it; a missing
// one is an error that says how to install it.
func TestLookTool(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go command: " + err.Error())
	}
	pathDir, gobin := t.TempDir(), t.TempDir()
	// go itself must stay reachable: LookTool asks it where GOBIN is.
	if err := os.Symlink(goBin, filepath.Join(pathDir, "go")); err != nil {
		t.Fatal(err)
	}
	for dir, name := range map[string]string{pathDir: "in-path", gobin: "in-gobin"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Not executable: not a tool.
	if err := os.WriteFile(filepath.Join(gobin, "not-executable"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", pathDir)
	t.Setenv("GOBIN", gobin)
	t.Setenv("GOPATH", t.TempDir()) // whatever is installed in the real one stays out

	for name, dir := range map[string]string{"in-path": pathDir, "in-gobin": gobin} {
		got, err := testenv.LookTool(name)
		if want := filepath.Join(dir, name); err != nil || got != want {
			t.Errorf("LookTool(%q) = %q, %v; want %s", name, got, err, want)
		}
	}
	for _, name := range []string{"not-executable", "fortio"} {
		if got, err := testenv.LookTool(name); err == nil {
			t.Errorf("LookTool(%q) = %q, want an error", name, got)
		}
	}
	_, err = testenv.LookTool("fortio")
	if err == nil || !strings.Contains(err.Error(), "go install fortio.org/fortio@v1.68.2") || !strings.Contains(err.Error(), gobin) {
		t.Errorf("missing fortio: %v, want where it was looked for and how to install it", err)
	}
}
