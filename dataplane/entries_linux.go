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

// diffCompiled returns the map changes that turn the services of prev into
// those of next. Services present in both as the same pointer are unchanged
// and cost nothing, so the work follows what changed. Backend entries are
// compared across services, as a new service may take the id of a removed one.
func diffCompiled(prev, next map[model.ServiceKey]*compiled) entriesDiff {
	d := entriesDiff{svcPuts: map[serviceSlSvcKey]serviceSlSvcValue{}}
	oldBE := map[serviceSlBeKey]serviceSlBeValue{}
	newBE := map[serviceSlBeKey]serviceSlBeValue{}
	for key, n := range next {
		o := prev[key]
		if o == n {
			continue
		}
		nv := svcValueOf(n.set)
		if o == nil || svcValueOf(o.set) != nv {
			d.svcPuts[svcKeyOf(key)] = nv
		}
		if o != nil {
			addBackends(oldBE, o.set)
		}
		addBackends(newBE, n.set)
	}
	for key, o := range prev {
		if _, ok := next[key]; !ok {
			d.svcDels = append(d.svcDels, svcKeyOf(key))
			addBackends(oldBE, o.set)
		}
	}
	d.bePuts, d.beDels = diffMaps(oldBE, newBE)
	return d
}

// flatten lays services out as the kernel entries of one generation.
func flatten(services map[model.ServiceKey]*compiled) kernelEntries {
	d := diffCompiled(nil, services)
	return kernelEntries{services: d.svcPuts, backends: d.bePuts}
}

func svcValueOf(set activeSet) serviceSlSvcValue {
	return serviceSlSvcValue{Id: set.ID, Count: uint32(len(set.Backends)), TotalWeight: set.TotalWeight}
}

func addBackends(m map[serviceSlBeKey]serviceSlBeValue, set activeSet) {
	for i, be := range set.Backends {
		m[serviceSlBeKey{SvcId: set.ID, Index: uint32(i)}] = serviceSlBeValue{
			Addr:      addrWords(be.Addr),
			Port:      htons(be.Port),
			Family:    family(be.Addr),
			CumWeight: be.CumWeight,
		}
	}
}

// adopt rebuilds the services in force from one generation's kernel
// entries. They are marked unknown, so the next Apply recompiles them and
// writes only what differs. strays counts backend entries no service owns.
func adopt(e kernelEntries) (services map[model.ServiceKey]*compiled, strays int) {
	services = make(map[model.ServiceKey]*compiled, len(e.services))
	owned := 0
	for k, v := range e.services {
		set := activeSet{ID: v.Id, TotalWeight: v.TotalWeight, Backends: make([]activeBackend, v.Count)}
		for i := range set.Backends {
			be, ok := e.backends[serviceSlBeKey{SvcId: v.Id, Index: uint32(i)}]
			if ok {
				owned++
			}
			set.Backends[i] = activeBackend{Addr: addrFromWords(be.Addr, be.Family), Port: ntohs(be.Port), CumWeight: be.CumWeight}
		}
		services[serviceKeyOf(k)] = &compiled{set: set}
	}
	return services, len(e.backends) - owned
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
