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

// entriesDiff is what turns one generation's content into another's, as
// entries to write and keys to delete, with the generation left zero.
type entriesDiff struct {
	svcKeys []serviceSlSvcKey
	svcVals []serviceSlSvcValue
	svcDels []serviceSlSvcKey
	beKeys  []serviceSlBeKey
	beVals  []serviceSlBeValue
	beDels  []serviceSlBeKey
}

func (d *entriesDiff) putService(k serviceSlSvcKey, v serviceSlSvcValue) {
	d.svcKeys = append(d.svcKeys, k)
	d.svcVals = append(d.svcVals, v)
}

func (d *entriesDiff) putBackend(k serviceSlBeKey, v serviceSlBeValue) {
	d.beKeys = append(d.beKeys, k)
	d.beVals = append(d.beVals, v)
}

// size counts the entries written or deleted.
func (d entriesDiff) size() int {
	return len(d.svcKeys) + len(d.svcDels) + len(d.beKeys) + len(d.beDels)
}

func (d entriesDiff) empty() bool { return d.size() == 0 }

// diffEntries compares two generations' full content.
func diffEntries(from, to kernelEntries) entriesDiff {
	var d entriesDiff
	for k, v := range to.services {
		if old, ok := from.services[k]; !ok || old != v {
			d.putService(k, v)
		}
	}
	for k := range from.services {
		if _, ok := to.services[k]; !ok {
			d.svcDels = append(d.svcDels, k)
		}
	}
	for k, v := range to.backends {
		if old, ok := from.backends[k]; !ok || old != v {
			d.putBackend(k, v)
		}
	}
	for k := range from.backends {
		if _, ok := to.backends[k]; !ok {
			d.beDels = append(d.beDels, k)
		}
	}
	return d
}

// diffPlanned returns the map changes that p makes to the services in
// force (prev). Its cost follows the size of p. A recompiled service keeps
// its id and new ones get ids never used before, so backends compare index
// by index within each service.
func diffPlanned(prev map[model.ServiceKey]*compiled, p planned) entriesDiff {
	var d entriesDiff
	n := 0
	for _, c := range p.changed {
		n += len(c.set.Backends)
	}
	d.svcKeys = make([]serviceSlSvcKey, 0, len(p.changed))
	d.svcVals = make([]serviceSlSvcValue, 0, len(p.changed))
	d.beKeys = make([]serviceSlBeKey, 0, n)
	d.beVals = make([]serviceSlBeValue, 0, n)
	for key, n := range p.changed {
		nv := svcValueOf(n.set)
		var old []activeBackend
		if o := prev[key]; o != nil {
			old = o.set.Backends
			if svcValueOf(o.set) != nv {
				d.putService(svcKeyOf(key), nv)
			}
		} else {
			d.putService(svcKeyOf(key), nv)
		}
		for i, be := range n.set.Backends {
			if i < len(old) && old[i] == be {
				continue
			}
			d.putBackend(serviceSlBeKey{SvcId: n.set.ID, Index: uint32(i)}, backendValue(be))
		}
		for i := len(n.set.Backends); i < len(old); i++ {
			d.beDels = append(d.beDels, serviceSlBeKey{SvcId: n.set.ID, Index: uint32(i)})
		}
	}
	for _, key := range p.removed {
		o := prev[key]
		d.svcDels = append(d.svcDels, svcKeyOf(key))
		for i := range o.set.Backends {
			d.beDels = append(d.beDels, serviceSlBeKey{SvcId: o.set.ID, Index: uint32(i)})
		}
	}
	return d
}

// flatten lays services out as the kernel entries of one generation.
func flatten(services map[model.ServiceKey]*compiled) kernelEntries {
	e := kernelEntries{
		services: make(map[serviceSlSvcKey]serviceSlSvcValue, len(services)),
		backends: make(map[serviceSlBeKey]serviceSlBeValue),
	}
	for key, c := range services {
		e.services[svcKeyOf(key)] = svcValueOf(c.set)
		addBackends(e.backends, c.set)
	}
	return e
}

// svcFastPathMask selects the fast-path setting in sl_svc_value.flags
// (SL_SVC_FAST_MASK).
const svcFastPathMask = 3

// svcL7 marks an L7 service in sl_svc_value.flags (SL_SVC_L7).
const svcL7 = 4

func svcValueOf(set activeSet) serviceSlSvcValue {
	flags := uint32(set.FastPath)
	if set.L7 {
		flags |= svcL7
	}
	return serviceSlSvcValue{Id: set.ID, Count: uint32(len(set.Backends)), TotalWeight: set.TotalWeight, Flags: flags}
}

func addBackends(m map[serviceSlBeKey]serviceSlBeValue, set activeSet) {
	for i, be := range set.Backends {
		m[serviceSlBeKey{SvcId: set.ID, Index: uint32(i)}] = backendValue(be)
	}
}

func backendValue(be activeBackend) serviceSlBeValue {
	return serviceSlBeValue{Addr: addrWords(be.Addr), Port: htons(be.Port), Family: family(be.Addr), CumWeight: be.CumWeight}
}

// adopt rebuilds the services in force from one generation's kernel
// entries. They are marked unknown, so the next Apply recompiles them and
// writes only what differs. strays are backend entries no service owns.
func adopt(e kernelEntries) (services map[model.ServiceKey]*compiled, strays []serviceSlBeKey) {
	services = make(map[model.ServiceKey]*compiled, len(e.services))
	owned := make(map[serviceSlBeKey]bool, len(e.backends))
	for k, v := range e.services {
		set := activeSet{ID: v.Id, TotalWeight: v.TotalWeight, Backends: make([]activeBackend, v.Count),
			FastPath: model.FastPath(v.Flags & svcFastPathMask), L7: v.Flags&svcL7 != 0}
		for i := range set.Backends {
			bk := serviceSlBeKey{SvcId: v.Id, Index: uint32(i)}
			be := e.backends[bk]
			owned[bk] = true
			set.Backends[i] = activeBackend{Addr: addrFromWords(be.Addr, be.Family), Port: ntohs(be.Port), CumWeight: be.CumWeight}
		}
		services[serviceKeyOf(k)] = &compiled{set: set}
	}
	for bk := range e.backends {
		if !owned[bk] {
			strays = append(strays, bk)
		}
	}
	return services, strays
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
