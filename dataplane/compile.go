package dataplane

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// activeSet is what the kernel needs of one service: its stable id and the
// endpoints that get new connections, with cumulative weights.
type activeSet struct {
	ID          uint32
	Backends    []activeBackend // canonical order: by pool name, then address, then port
	TotalWeight uint32
	FastPath    model.FastPath // the service's setting, which the kernel reads with its backends
	L7          bool           // an L7 service: its backends are the node's L7 proxy
}

type activeBackend struct {
	Addr      netip.Addr
	Port      uint16
	CumWeight uint32 // this backend owns [previous CumWeight, CumWeight)
}

// splitScale is the total weight a service with several pools is scaled to:
// large enough that rounding moves a pool's share by under one in a million.
const splitScale = 1 << 24

// compiled is one service as the dataplane programs it.
type compiled struct {
	svc   model.Service // as last applied; its slices are the caller's and are only read
	known bool          // svc is set; false for a service adopted from pinned maps
	set   activeSet
	epoch uint64 // the last plan that found this service in its state
}

// planned is what a new state changes in the services in force.
type planned struct {
	changed map[model.ServiceKey]*compiled // new services and recompiled ones
	removed []model.ServiceKey             // services in force that the state does not have
	nextID  uint32                         // the id the next new service gets
	order   []*compiled                    // the state's services, in its order
}

// plan validates s against caps and compiles what differs from prev (the
// services in force): services equal to those in force are reused as
// they are — they were validated when compiled — so its cost follows what
// changed, plus one lookup per service. New services get ids from nextID on,
// in key order, so the result does not depend on the order of s; ids are
// never reused while the dataplane lives. epoch must differ from every
// earlier call's: plan marks the services of prev it finds with it (the only
// change it makes to prev, which nothing else reads) and so detects both
// removed services and duplicates without building a map of all of them.
//
// order is the order of the last planned state that was applied (nil if
// unknown): the services of prev as that state listed them. When s lists
// the same services in the same order — the usual update, where only some
// of them changed — plan compares s with order position by position and
// looks nothing up.
func plan(s model.State, caps Capacity, prev map[model.ServiceKey]*compiled, order []*compiled, nextID uint32, epoch uint64) (planned, error) {
	caps = caps.WithDefaults()
	if len(s.Services) > caps.Services {
		return planned{}, &model.EntryError{
			Entry:  model.Label(caps.Services, &s.Services[caps.Services]),
			Reason: fmt.Sprintf("state has %d services, capacity is %d", len(s.Services), caps.Services),
			Class:  model.ErrCapacity,
			Limit:  "Services",
		}
	}
	if p, same, err := planInOrder(s, caps, order, nextID); same {
		return p, err
	}

	p := planned{changed: make(map[model.ServiceKey]*compiled), nextID: nextID, order: make([]*compiled, len(s.Services))}
	var fresh []model.ServiceKey
	found, backends := 0, 0
	for i := range s.Services {
		svc := &s.Services[i]
		key := svc.Key()
		old := prev[key]
		c := old
		if old != nil {
			if old.epoch == epoch {
				return planned{}, s.ValidateUnique() // seen before in this state
			}
			old.epoch = epoch
			found++
		} else if _, dup := p.changed[key]; dup {
			return planned{}, s.ValidateUnique()
		}
		if old == nil || !old.known || !old.svc.Equal(svc) {
			var err error
			if c, err = compile(i, svc, epoch); err != nil {
				return planned{}, err
			}
			if old != nil {
				c.set.ID = old.set.ID
			} else {
				fresh = append(fresh, key)
			}
			p.changed[key] = c
		}
		p.order[i] = c
		backends += len(c.set.Backends)
		if err := checkBackends(caps, backends, i, svc); err != nil {
			return planned{}, err
		}
	}
	if found < len(prev) {
		for key, c := range prev {
			if c.epoch != epoch {
				p.removed = append(p.removed, key)
			}
		}
	}

	slices.SortFunc(fresh, compareKeys)
	for _, key := range fresh {
		p.changed[key].set.ID = p.nextID
		p.nextID++
	}
	return p, nil
}

// planInOrder is plan for a state that lists the services of order, in
// that order (same reports whether it does; if not, it has done nothing).
// Such a state has no duplicates (order came from a valid state), removes
// nothing and adds nothing; the services that differ are compiled again
// under their ids, and the result and any error are those of the general
// case.
func planInOrder(s model.State, caps Capacity, order []*compiled, nextID uint32) (p planned, same bool, err error) {
	if len(order) == 0 || len(order) != len(s.Services) {
		return planned{}, false, nil
	}
	for i := range s.Services {
		if order[i].svc.Key() != s.Services[i].Key() {
			return planned{}, false, nil
		}
	}
	p = planned{changed: make(map[model.ServiceKey]*compiled), nextID: nextID, order: slices.Clone(order)}
	backends := 0
	for i := range s.Services {
		svc := &s.Services[i]
		c := order[i]
		if !c.svc.Equal(svc) {
			id := c.set.ID
			if c, err = compile(i, svc, c.epoch); err != nil {
				return planned{}, true, err
			}
			c.set.ID = id
			p.changed[svc.Key()] = c
			p.order[i] = c
		}
		backends += len(c.set.Backends)
		if err := checkBackends(caps, backends, i, svc); err != nil {
			return planned{}, true, err
		}
	}
	return p, true, nil
}

// compile validates the i-th service of a state and lays out its backends.
func compile(i int, svc *model.Service, epoch uint64) (*compiled, error) {
	if err := model.ValidateService(i, svc); err != nil {
		return nil, err
	}
	set, err := chooseActiveSet(i, svc)
	if err != nil {
		return nil, err
	}
	return &compiled{svc: *svc, known: true, set: set, epoch: epoch}, nil
}

// checkBackends fails once the services up to the i-th need more backends
// than caps allow.
func checkBackends(caps Capacity, backends, i int, svc *model.Service) error {
	if backends > caps.Backends {
		return &model.EntryError{
			Entry:  model.Label(i, svc),
			Reason: fmt.Sprintf("backend capacity %d exhausted (state needs at least %d)", caps.Backends, backends),
			Class:  model.ErrCapacity,
			Limit:  "Backends",
		}
	}
	return nil
}

// pool is one split's usable endpoints at its best priority.
type pool struct {
	name     string
	weight   uint32
	priority uint32
	eps      []model.Endpoint // sorted by address, then port
	total    uint64           // sum of endpoint weights (0 counted as 1)
}

// chooseActiveSet lays out the endpoints that get new connections. Each pool
// keeps only usable endpoints of its highest priority (lowest number) that
// has any. With one pool the endpoint weights are used as they are; with
// several, each endpoint's weight is scaled so that every pool gets its
// split's share of connections.
func chooseActiveSet(i int, svc *model.Service) (activeSet, error) {
	var pools []pool
	n := 0
	for _, sp := range svc.Pools() {
		p := usable(sp)
		if p.weight == 0 || len(p.eps) == 0 {
			continue
		}
		pools = append(pools, p)
		n += len(p.eps)
	}
	if n > MaxBackendsPerService {
		return activeSet{}, &model.EntryError{
			Entry:  model.Label(i, svc),
			Reason: fmt.Sprintf("%d usable endpoints, at most %d are supported", n, MaxBackendsPerService),
			Class:  model.ErrCapacity,
		}
	}
	slices.SortFunc(pools, func(a, b pool) int { return cmp.Compare(a.name, b.name) })

	var splitTotal uint64
	for _, p := range pools {
		splitTotal += uint64(p.weight)
	}
	set := activeSet{Backends: make([]activeBackend, 0, n), FastPath: svc.FastPath, L7: svc.L7 != nil}
	var cum uint64
	for _, p := range pools {
		for _, ep := range p.eps {
			w := endpointWeight(ep)
			if len(pools) > 1 {
				share := float64(w) * float64(p.weight) / (float64(p.total) * float64(splitTotal))
				w = max(1, uint64(math.Round(share*splitScale)))
			}
			cum += w
			if cum > math.MaxUint32 {
				return activeSet{}, &model.EntryError{
					Entry:  model.Label(i, svc),
					Reason: fmt.Sprintf("sum of endpoint weights at priority %d exceeds %d", p.priority, uint32(math.MaxUint32)),
					Class:  model.ErrInvalidState,
				}
			}
			set.Backends = append(set.Backends, activeBackend{Addr: ep.Addr, Port: ep.Port, CumWeight: uint32(cum)})
		}
	}
	set.TotalWeight = uint32(cum)
	return set, nil
}

func endpointWeight(ep model.Endpoint) uint64 {
	if ep.Weight == 0 {
		return 1
	}
	return uint64(ep.Weight)
}

// usable returns a split's usable endpoints at the highest priority that
// has any.
func usable(sp model.Split) pool {
	p := pool{name: sp.Name, weight: sp.Weight}
	found := false
	for _, ep := range sp.Endpoints {
		if ep.Health.Usable() && (!found || ep.Priority < p.priority) {
			p.priority, found = ep.Priority, true
		}
	}
	if !found {
		return p
	}
	p.eps = make([]model.Endpoint, 0, len(sp.Endpoints))
	for _, ep := range sp.Endpoints {
		if ep.Health.Usable() && ep.Priority == p.priority {
			p.eps = append(p.eps, ep)
			p.total += endpointWeight(ep)
		}
	}
	slices.SortFunc(p.eps, func(a, b model.Endpoint) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
	return p
}

func compareKeys(a, b model.ServiceKey) int {
	if c := a.VIP.Compare(b.VIP); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Protocol, b.Protocol)
}
