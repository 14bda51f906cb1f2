package dataplane

import (
	"github.com/sluice-mesh/sluice/dataplane/model"

	"encoding/binary"
	"net/netip"
)

// kernelEntries is the content of one generation of the routing maps, with
// the generation field of every key left zero.
type kernelEntries struct {
	services map[serviceSlSvcKey]serviceSlSvcValue
	backends map[serviceSlBeKey]serviceSlBeValue
}

func (e kernelEntries) equal(o kernelEntries) bool {
	return mapsEqual(e.services, o.services) && mapsEqual(e.backends, o.backends)
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// entriesDiff is what turns one generation's content into another's.
type entriesDiff struct {
	svcPuts map[serviceSlSvcKey]serviceSlSvcValue
	svcDels []serviceSlSvcKey
	bePuts  map[serviceSlBeKey]serviceSlBeValue
	beDels  []serviceSlBeKey
}

func diffEntries(from, to kernelEntries) entriesDiff {
	var d entriesDiff
	d.svcPuts, d.svcDels = diffMaps(from.services, to.services)
	d.bePuts, d.beDels = diffMaps(from.backends, to.backends)
	return d
}

func (d entriesDiff) empty() bool {
	return len(d.svcPuts)+len(d.svcDels)+len(d.bePuts)+len(d.beDels) == 0
}

func diffMaps[K, V comparable](from, to map[K]V) (puts map[K]V, dels []K) {
	puts = make(map[K]V)
	for k, v := range to {
		if old, ok := from[k]; !ok || old != v {
			puts[k] = v
		}
	}
	for k := range from {
		if _, ok := to[k]; !ok {
			dels = append(dels, k)
		}
	}
	return puts, dels
}

// flatten lays active sets out as kernel map entries.
func flatten(sets map[model.ServiceKey]activeSet) kernelEntries {
	e := kernelEntries{
		services: make(map[serviceSlSvcKey]serviceSlSvcValue, len(sets)),
		backends: make(map[serviceSlBeKey]serviceSlBeValue),
	}
	for k, set := range sets {
		e.services[svcKeyOf(k)] = serviceSlSvcValue{
			Id:          set.ID,
			Count:       uint32(len(set.Backends)),
			TotalWeight: set.TotalWeight,
		}
		for i, be := range set.Backends {
			e.backends[serviceSlBeKey{SvcId: set.ID, Index: uint32(i)}] = serviceSlBeValue{
				Addr:      addrWords(be.Addr),
				Port:      htons(be.Port),
				Family:    family(be.Addr),
				CumWeight: be.CumWeight,
			}
		}
	}
	return e
}

// serviceIDs recovers the id of every service from kernel entries.
func serviceIDs(e kernelEntries) map[model.ServiceKey]uint32 {
	ids := make(map[model.ServiceKey]uint32, len(e.services))
	for k, v := range e.services {
		ids[serviceKeyOf(k)] = v.Id
	}
	return ids
}

func svcKeyOf(k model.ServiceKey) serviceSlSvcKey {
	return serviceSlSvcKey{
		Addr:   addrWords(k.VIP),
		Port:   htons(k.Port),
		Proto:  uint8(k.Protocol),
		Family: family(k.VIP),
	}
}

func serviceKeyOf(k serviceSlSvcKey) model.ServiceKey {
	return model.ServiceKey{VIP: addrFromWords(k.Addr, k.Family), Port: ntohs(k.Port), Protocol: model.Protocol(k.Proto)}
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

// addrWords stores an address as the kernel does: network byte order in
// memory, IPv4 in the first word.
func addrWords(a netip.Addr) (w [4]uint32) {
	if a.Is4() {
		b := a.As4()
		w[0] = binary.NativeEndian.Uint32(b[:])
		return w
	}
	b := a.As16()
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func addrFromWords(w [4]uint32, fam uint8) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	if fam == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
