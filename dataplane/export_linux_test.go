package dataplane

import (
	"github.com/sluice-mesh/sluice/dataplane/model"

	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// WriteInactiveForTest leaves the debris of a process that died half way
// through an Apply: in the inactive generation of the maps pinned in pinDir,
// the TCP service vip routes to backend alone.
func WriteInactiveForTest(pinDir string, vip, backend netip.AddrPort) error {
	load := func(name string) (*ebpf.Map, error) { return ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil) }
	active, err := load("sl_active")
	if err != nil {
		return err
	}
	defer active.Close()
	services, err := load("sl_services")
	if err != nil {
		return err
	}
	defer services.Close()
	backends, err := load("sl_backends")
	if err != nil {
		return err
	}
	defer backends.Close()

	var cfg serviceSlConfig
	if err := active.Lookup(uint32(0), &cfg); err != nil {
		return err
	}
	key := svcKeyOf(model.ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Protocol: model.TCP})
	key.Gen = 1 - cfg.ActiveGen
	var val serviceSlSvcValue
	if err := services.Lookup(&key, &val); err != nil {
		val.Id = 4242
	}
	val.Count, val.TotalWeight = 1, 1
	if err := services.Put(&key, &val); err != nil {
		return err
	}
	be := serviceSlBeValue{Addr: addrWords(backend.Addr()), Port: htons(backend.Port()), Family: family(backend.Addr()), CumWeight: 1}
	return backends.Put(&serviceSlBeKey{Gen: key.Gen, SvcId: val.Id, Index: 0}, &be)
}

// strayID is a service id no state uses.
const strayID = 999_999

// WriteStrayForTest puts a backend entry no service owns into the active
// generation of the maps pinned in pinDir.
func WriteStrayForTest(pinDir string) error {
	active, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "sl_active"), nil)
	if err != nil {
		return err
	}
	defer active.Close()
	backends, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "sl_backends"), nil)
	if err != nil {
		return err
	}
	defer backends.Close()
	var cfg serviceSlConfig
	if err := active.Lookup(uint32(0), &cfg); err != nil {
		return err
	}
	return backends.Put(&serviceSlBeKey{Gen: cfg.ActiveGen, SvcId: strayID}, &serviceSlBeValue{CumWeight: 1})
}

// StraysForTest counts the entries WriteStrayForTest writes, in either generation.
func StraysForTest(pinDir string) (int, error) {
	backends, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "sl_backends"), nil)
	if err != nil {
		return 0, err
	}
	defer backends.Close()
	n := 0
	var k serviceSlBeKey
	var v serviceSlBeValue
	it := backends.Iterate()
	for it.Next(&k, &v) {
		if k.SvcId == strayID {
			n++
		}
	}
	return n, it.Err()
}

// FastCountsForTest counts the entries of the fast path's byte counts
// pinned under pinDir.
func FastCountsForTest(pinDir string) (int, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "sl_fast_bytes"), nil)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	var k serviceSlFastKey
	var v serviceSlFastCount
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
