package sluice_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/sluice-mesh/sluice"

func under(path string, roots ...string) bool {
	for _, r := range roots {
		if path == mod+"/"+r || strings.HasPrefix(path, mod+"/"+r+"/") {
			return true
		}
	}
	return false
}

func isEBPF(path string) bool {
	return path == "github.com/cilium/ebpf" || strings.HasPrefix(path, "github.com/cilium/ebpf/")
}

// The kernel-facing library may only be imported where kernel objects are
// managed: dataplane/ (not its pure model), sockops/ and the test helpers
// under e2e/. xds/, identity/ and dataplane/model stay pure Go, not even
// depending on it indirectly, so they build and test on any OS.
func TestOnlyKernelPackagesImportEBPF(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
			Deps                               []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		seen++
		if under(p.ImportPath, "xds", "identity", "dataplane/model") {
			for _, dep := range p.Deps {
				if isEBPF(dep) {
					t.Errorf("%s depends on %s; it must stay pure Go", p.ImportPath, dep)
					break
				}
			}
		}
		if p.ImportPath == mod+"/dataplane" || under(p.ImportPath, "sockops", "e2e") {
			continue
		}
		for _, imp := range append(append(p.Imports, p.TestImports...), p.XTestImports...) {
			if isEBPF(imp) {
				t.Errorf("%s imports %s; only dataplane/, sockops/ and e2e/ may", p.ImportPath, imp)
			}
		}
	}
	if seen < 2 {
		t.Fatalf("go list found %d packages; the check saw nothing", seen)
	}
}
