package sluice_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// The kernel-facing library may only be imported where kernel objects are
// managed: dataplane/, sockops/ and the test helpers under e2e/. xds/ and
// identity/ stay pure Go so they build and test on any OS.
func TestOnlyKernelPackagesImportEBPF(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/sluice-mesh/sluice/"
	allowed := []string{mod + "dataplane", mod + "sockops", mod + "e2e"}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for {
		var p struct {
			ImportPath           string
			Imports, TestImports []string
			XTestImports         []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		seen++
		ok := false
		for _, a := range allowed {
			if p.ImportPath == a || strings.HasPrefix(p.ImportPath, a+"/") {
				ok = true
			}
		}
		if ok {
			continue
		}
		for _, imp := range append(append(p.Imports, p.TestImports...), p.XTestImports...) {
			if imp == "github.com/cilium/ebpf" || strings.HasPrefix(imp, "github.com/cilium/ebpf/") {
				t.Errorf("%s imports %s; only dataplane/, sockops/ and e2e/ may", p.ImportPath, imp)
			}
		}
	}
	if seen < 2 {
		t.Fatalf("go list found %d packages; the check saw nothing", seen)
	}
}
