package dataplane

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

func ep(addr string, mods ...func(*model.Endpoint)) model.Endpoint {
	ap := netip.MustParseAddrPort(addr)
	e := model.Endpoint{Addr: ap.Addr(), Port: ap.Port()}
	for _, m := range mods {
		m(&e)
	}
	return e
}

func weight(w uint32) func(*model.Endpoint)       { return func(e *model.Endpoint) { e.Weight = w } }
func health(h model.Health) func(*model.Endpoint) { return func(e *model.Endpoint) { e.Health = h } }
func priority(p uint32) func(*model.Endpoint)     { return func(e *model.Endpoint) { e.Priority = p } }

func service(name, vip string, eps ...model.Endpoint) model.Service {
	return model.Service{Name: name, VIP: netip.MustParseAddr(vip), Port: 80, Protocol: model.TCP, Endpoints: eps}
}

func TestCompileRejectsInvalidStates(t *testing.T) {
	for _, tc := range []struct {
		name    string
		state   model.State
		caps    Capacity
		class   error
		mention string
	}{
		{"missing VIP", model.State{Services: []model.Service{{Name: "x", Port: 80, Protocol: model.TCP}}}, Capacity{}, model.ErrInvalidState, `service "x"`},
		{"port 0", model.State{Services: []model.Service{{Name: "x", VIP: netip.MustParseAddr("10.0.0.1"), Protocol: model.TCP}}}, Capacity{}, model.ErrInvalidState, "port 0"},
		{"protocol", model.State{Services: []model.Service{{Name: "x", VIP: netip.MustParseAddr("10.0.0.1"), Port: 1, Protocol: 1}}}, Capacity{}, model.ErrInvalidState, "TCP or UDP"},
		{"v4-mapped VIP", model.State{Services: []model.Service{service("m", "::ffff:10.0.0.1")}}, Capacity{}, model.ErrInvalidState, "use the IPv4 form 10.0.0.1"},
		{"loopback VIP", model.State{Services: []model.Service{service("lo", "127.0.0.5")}}, Capacity{}, model.ErrInvalidState, "loopback"},
		{"duplicate", model.State{Services: []model.Service{service("a", "10.0.0.1"), service("b", "10.0.0.1")}}, Capacity{}, model.ErrInvalidState, `service "b" (10.0.0.1:80/TCP): duplicate VIP:port/protocol, already used by service "a"`},
		{"endpoint family", model.State{Services: []model.Service{service("f", "10.0.0.1", ep("[fd00::1]:80"))}}, Capacity{}, model.ErrInvalidState, "endpoint 0 ([fd00::1]:80): address family differs"},
		{"endpoint port 0", model.State{Services: []model.Service{service("p", "10.0.0.1", ep("10.1.0.1:1"), ep("10.1.0.2:0"))}}, Capacity{}, model.ErrInvalidState, "endpoint 1 (10.1.0.2:0): port 0"},
		{"duplicate endpoint", model.State{Services: []model.Service{service("d", "10.0.0.1", ep("10.1.0.1:80"), ep("10.1.0.1:80"))}}, Capacity{}, model.ErrInvalidState, "duplicate of endpoint 0"},
		{"bad health", model.State{Services: []model.Service{service("h", "10.0.0.1", ep("10.1.0.1:80", health(9)))}}, Capacity{}, model.ErrInvalidState, "unknown health"},
		{"weight overflow", model.State{Services: []model.Service{service("w", "10.0.0.1", ep("10.1.0.1:80", weight(1<<31)), ep("10.1.0.2:80", weight(1<<31)))}}, Capacity{}, model.ErrInvalidState, "sum of endpoint weights"},
		{"services over capacity", model.State{Services: []model.Service{service("a", "10.0.0.1"), service("b", "10.0.0.2")}}, Capacity{Services: 1}, model.ErrCapacity, `service "b"`},
		{"backends over capacity", model.State{Services: []model.Service{
			service("a", "10.0.0.1", ep("10.1.0.1:80")),
			service("b", "10.0.0.2", ep("10.1.0.2:80"), ep("10.1.0.3:80")),
		}}, Capacity{Backends: 2}, model.ErrCapacity, `service "b" (10.0.0.2:80/TCP): backend capacity 2 exhausted`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := plan(tc.state, tc.caps, nil, nil, 1, 1)
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want %v", err, tc.class)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestUnhealthyEndpointsUseNoCapacity(t *testing.T) {
	s := model.State{Services: []model.Service{service("a", "10.0.0.1",
		ep("10.1.0.1:80"), ep("10.1.0.2:80", health(model.HealthUnhealthy)), ep("10.1.0.3:80", priority(1)))}}
	if _, err := plan(s, Capacity{Backends: 1}, nil, nil, 1, 1); err != nil {
		t.Errorf("only one endpoint is usable at the chosen priority, yet: %v", err)
	}
}

func TestActiveSet(t *testing.T) {
	for _, tc := range []struct {
		name  string
		eps   []model.Endpoint
		want  []string // addr:port=cumulative weight, in order
		total uint32
	}{
		{"no endpoints", nil, nil, 0},
		{"zero weight counts as one", []model.Endpoint{ep("10.1.0.2:80"), ep("10.1.0.1:80", weight(3))}, []string{"10.1.0.1:80=3", "10.1.0.2:80=4"}, 4},
		{"unusable dropped", []model.Endpoint{
			ep("10.1.0.1:80", health(model.HealthUnhealthy)), ep("10.1.0.2:80", health(model.HealthDraining)),
			ep("10.1.0.3:80", health(model.HealthHealthy), weight(2)), ep("10.1.0.4:80", health(model.HealthUnknown)),
		}, []string{"10.1.0.3:80=2", "10.1.0.4:80=3"}, 3},
		{"highest priority with a usable endpoint", []model.Endpoint{
			ep("10.1.0.1:80", health(model.HealthUnhealthy)), ep("10.1.0.2:80", priority(2)),
			ep("10.1.0.3:80", priority(1), weight(5)), ep("10.1.0.4:80", priority(1), health(model.HealthDraining)),
		}, []string{"10.1.0.3:80=5"}, 5},
		{"all unusable", []model.Endpoint{ep("10.1.0.1:80", health(model.HealthUnhealthy), priority(3))}, nil, 0},
		{"order by address then port", []model.Endpoint{ep("10.1.0.1:90"), ep("10.1.0.1:80"), ep("10.0.0.9:99")},
			[]string{"10.0.0.9:99=1", "10.1.0.1:80=2", "10.1.0.1:90=3"}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets, err := compileFresh(model.State{Services: []model.Service{service("s", "10.0.0.1", tc.eps...)}})
			if err != nil {
				t.Fatal(err)
			}
			set := sets[model.ServiceKey{VIP: netip.MustParseAddr("10.0.0.1"), Port: 80, Protocol: model.TCP}].set
			var got []string
			for _, b := range set.Backends {
				got = append(got, netip.AddrPortFrom(b.Addr, b.Port).String()+"="+strconv.FormatUint(uint64(b.CumWeight), 10))
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") || set.TotalWeight != tc.total {
				t.Errorf("active set %v total %d, want %v total %d", got, set.TotalWeight, tc.want, tc.total)
			}
		})
	}
}

// compileFresh plans s onto an empty dataplane and returns its services.
func compileFresh(s model.State) (map[model.ServiceKey]*compiled, error) {
	p, err := plan(s, Capacity{}, nil, nil, 1, 1)
	return p.changed, err
}

// applyPlan returns the services in force after p, as Apply commits them.
func applyPlan(prev map[model.ServiceKey]*compiled, p planned) map[model.ServiceKey]*compiled {
	next := maps.Clone(prev)
	if next == nil {
		next = map[model.ServiceKey]*compiled{}
	}
	maps.Copy(next, p.changed)
	for _, k := range p.removed {
		delete(next, k)
	}
	return next
}

func TestServiceIDs(t *testing.T) {
	key := func(vip string) model.ServiceKey {
		return model.ServiceKey{VIP: netip.MustParseAddr(vip), Port: 80, Protocol: model.TCP}
	}
	ids := func(sets map[model.ServiceKey]*compiled) map[model.ServiceKey]uint32 {
		m := map[model.ServiceKey]uint32{}
		for k, c := range sets {
			m[k] = c.set.ID
		}
		return m
	}
	p1, err := plan(model.State{Services: []model.Service{service("b", "10.0.0.2"), service("a", "10.0.0.1"), service("c", "10.0.0.3")}}, Capacity{}, nil, nil, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	first := applyPlan(nil, p1)
	got := ids(first)
	if got[key("10.0.0.1")] != 1 || got[key("10.0.0.2")] != 2 || got[key("10.0.0.3")] != 3 || p1.nextID != 4 {
		t.Fatalf("fresh ids not given in key order from 1: %v (next %d)", got, p1.nextID)
	}
	// Remove b, add e and d: a and c keep their ids; d and e get new ones
	// in key order; b's id is not reused.
	p2, err := plan(model.State{Services: []model.Service{service("e", "10.0.0.5"), service("c", "10.0.0.3"), service("d", "10.0.0.4"), service("a", "10.0.0.1")}}, Capacity{}, first, nil, p1.nextID, 2)
	if err != nil {
		t.Fatal(err)
	}
	got2 := ids(applyPlan(first, p2))
	want := map[model.ServiceKey]uint32{key("10.0.0.1"): 1, key("10.0.0.3"): 3, key("10.0.0.4"): 4, key("10.0.0.5"): 5}
	if len(got2) != len(want) {
		t.Errorf("ids %v, want %v", got2, want)
	}
	for k, id := range want {
		if got2[k] != id {
			t.Errorf("id of %v = %d, want %d (all: %v)", k, got2[k], id, got2)
		}
	}
	if len(p2.removed) != 1 || p2.removed[0] != key("10.0.0.2") {
		t.Errorf("removed %v, want b", p2.removed)
	}
}

func TestPlanFindsDuplicates(t *testing.T) {
	a := service("a", "10.0.0.1")
	b := service("b", "10.0.0.2")
	first := applyPlan(nil, mustPlan(t, model.State{Services: []model.Service{a, b}}, nil, 1))
	for _, tc := range []struct {
		name  string
		state model.State
	}{
		{"two services in force", model.State{Services: []model.Service{a, b, service("a2", "10.0.0.1")}}},
		{"two new services", model.State{Services: []model.Service{a, service("c", "10.0.0.3"), service("c2", "10.0.0.3")}}},
	} {
		_, err := plan(tc.state, Capacity{}, first, nil, 3, 2+uint64(len(tc.name)))
		if !errors.Is(err, model.ErrInvalidState) || !strings.Contains(err.Error(), "duplicate VIP:port/protocol") {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

func mustPlan(t *testing.T, s model.State, prev map[model.ServiceKey]*compiled, epoch uint64) planned {
	t.Helper()
	p, err := plan(s, Capacity{}, prev, nil, 1, epoch)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseCgroup2Mount(t *testing.T) {
	hybrid := `25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
`
	if got, err := ParseCgroup2Mount(strings.NewReader(hybrid)); err != nil || got != "/sys/fs/cgroup/unified" {
		t.Errorf("hybrid: got %q, %v", got, err)
	}
	optional := `36 35 0:31 / /mnt/my\040cgroups rw shared:10 master:3 - cgroup2 none rw` + "\n"
	if got, err := ParseCgroup2Mount(strings.NewReader(optional)); err != nil || got != "/mnt/my cgroups" {
		t.Errorf("escaped path with optional fields: got %q, %v", got, err)
	}
	if _, err := ParseCgroup2Mount(strings.NewReader("37 35 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")); !errors.Is(err, ErrNoCgroup2) {
		t.Errorf("v1 only: err = %v, want ErrNoCgroup2", err)
	}
}

func TestSplitsShareConnectionsByWeight(t *testing.T) {
	shares := func(s model.Service) map[string]float64 {
		t.Helper()
		sets, err := compileFresh(model.State{Services: []model.Service{s}})
		if err != nil {
			t.Fatal(err)
		}
		set := sets[s.Key()].set
		out := map[string]float64{}
		prev := uint32(0)
		for _, b := range set.Backends {
			out[netip.AddrPortFrom(b.Addr, b.Port).String()] += float64(b.CumWeight-prev) / float64(set.TotalWeight)
			prev = b.CumWeight
		}
		return out
	}
	base := service("split", "10.0.0.1")
	base.Splits = []model.Split{
		{Name: "stable", Weight: 80, Endpoints: []model.Endpoint{ep("10.1.0.1:80"), ep("10.1.0.2:80", weight(3))}},
		{Name: "canary", Weight: 20, Endpoints: []model.Endpoint{ep("10.2.0.1:80", weight(7)), ep("10.2.0.2:80", health(model.HealthUnhealthy))}},
		{Name: "dark", Weight: 0, Endpoints: []model.Endpoint{ep("10.3.0.1:80")}},
	}
	want := map[string]float64{"10.1.0.1:80": 0.2, "10.1.0.2:80": 0.6, "10.2.0.1:80": 0.2}
	got := shares(base)
	if len(got) != len(want) {
		t.Fatalf("shares %v, want %v", got, want)
	}
	for k, w := range want {
		if diff := got[k] - w; diff > 1e-6 || diff < -1e-6 {
			t.Errorf("share of %s = %.7f, want %.7f", k, got[k], w)
		}
	}

	// A pool with no usable endpoint gets nothing; the others share its part.
	down := base
	down.Splits = append([]model.Split(nil), base.Splits...)
	down.Splits[1].Endpoints = []model.Endpoint{ep("10.2.0.1:80", health(model.HealthDraining))}
	if got := shares(down); got["10.1.0.1:80"] < 0.25-1e-6 || got["10.1.0.1:80"] > 0.25+1e-6 || len(got) != 2 {
		t.Errorf("with the canary down: %v, want stable alone at 0.25/0.75", got)
	}
}

// plan reuses unchanged services (they are not in the plan) and recompiles
// changed ones, keeping their ids.
func TestPlanReusesUnchangedServices(t *testing.T) {
	a := service("a", "10.0.0.1", ep("10.1.0.1:80"))
	b := service("b", "10.0.0.2", ep("10.1.0.2:80"))
	first := applyPlan(nil, mustPlan(t, model.State{Services: []model.Service{a, b}}, nil, 1))
	b2 := service("b", "10.0.0.2", ep("10.1.0.2:80", weight(5)))
	p := mustPlan(t, model.State{Services: []model.Service{b2, a}}, first, 2)
	if _, ok := p.changed[a.Key()]; ok {
		t.Error("unchanged service a was recompiled")
	}
	nb := p.changed[b.Key()]
	if nb == nil || nb.set.ID != first[b.Key()].set.ID || nb.set.TotalWeight != 5 || len(p.removed) != 0 {
		t.Errorf("changed service b: %+v (was %+v), removed %v", nb, first[b.Key()], p.removed)
	}
	if first[b.Key()].set.TotalWeight != 1 {
		t.Error("plan modified the services in force")
	}
}

// planner applies plans as Apply commits them, with or without the order
// of the last state.
type planner struct {
	useOrder bool
	current  map[model.ServiceKey]*compiled
	order    []*compiled
	nextID   uint32
	epoch    uint64
}

func (pl *planner) plan(s model.State, caps Capacity) (planned, error) {
	pl.epoch++
	var order []*compiled
	if pl.useOrder {
		order = pl.order
	}
	p, err := plan(s, caps, pl.current, order, pl.nextID, pl.epoch)
	if err == nil {
		if pl.current == nil {
			pl.current = map[model.ServiceKey]*compiled{}
		}
		maps.Copy(pl.current, p.changed)
		for _, k := range p.removed {
			delete(pl.current, k)
		}
		pl.order, pl.nextID = p.order, p.nextID
	}
	return p, err
}

// A state listing the services in force in the same order is planned
// position by position (planInOrder); the result and every error must be
// those of the general plan, which looks each service up. Random states
// over a small set of services, mostly the last state with a few changes,
// sometimes reordered, shrunk, grown, invalid or over capacity.
func TestPlanInOrderMatchesGeneral(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	universe := make([]model.Service, 12)
	for i := range universe {
		universe[i] = service("s"+strconv.Itoa(i), "10.0.0."+strconv.Itoa(i+1))
	}
	endpoints := func() []model.Endpoint {
		var eps []model.Endpoint
		for j := range rng.IntN(4) {
			eps = append(eps, ep("10.1.0."+strconv.Itoa(rng.IntN(3)+1)+":"+strconv.Itoa(8080+j), weight(uint32(rng.IntN(3)))))
		}
		return eps
	}
	fast, general := &planner{useOrder: true, nextID: 1}, &planner{nextID: 1}
	var last []model.Service
	inOrder := 0
	for step := range 3000 {
		s := slices.Clone(last)
		switch r := rng.IntN(20); {
		case r < 12 && len(s) > 0: // the usual update: some services change
			for range 1 + rng.IntN(2) {
				s[rng.IntN(len(s))].Endpoints = endpoints()
			}
		case r < 14 && len(s) > 1:
			rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
		case r < 16 && len(s) > 0:
			i := rng.IntN(len(s))
			s = slices.Delete(s, i, i+1)
		case r < 18:
			svc := universe[rng.IntN(len(universe))]
			svc.Endpoints = endpoints()
			s = append(s, svc) // may repeat one: a duplicate
		case len(s) > 0: // invalid: no VIP
			s[rng.IntN(len(s))].VIP = netip.Addr{}
		}
		caps := Capacity{}
		if rng.IntN(10) == 0 {
			caps.Backends = 1 + rng.IntN(8)
		}
		state := model.State{Services: s}
		if _, same, _ := planInOrder(state, caps.WithDefaults(), fast.order, fast.nextID); same {
			inOrder++
		}
		pf, errF := fast.plan(state, caps)
		pg, errG := general.plan(state, caps)
		if fmt.Sprint(errF) != fmt.Sprint(errG) {
			t.Fatalf("step %d: in order: %v; general: %v", step, errF, errG)
		}
		if errF != nil {
			continue
		}
		last = s
		if pf.nextID != pg.nextID || !slices.Equal(sortedKeys(pf.removed), sortedKeys(pg.removed)) {
			t.Fatalf("step %d: next id %d / %d, removed %v / %v", step, pf.nextID, pg.nextID, pf.removed, pg.removed)
		}
		if len(pf.changed) != len(pg.changed) {
			t.Fatalf("step %d: changed %d services in order, %d in general", step, len(pf.changed), len(pg.changed))
		}
		for k, c := range pg.changed {
			if f := pf.changed[k]; f == nil || !reflect.DeepEqual(f.set, c.set) {
				t.Fatalf("step %d: %v compiled differently", step, k)
			}
		}
		for k, c := range general.current {
			if f := fast.current[k]; f == nil || !reflect.DeepEqual(f.set, c.set) {
				t.Fatalf("step %d: %v in force differs", step, k)
			}
		}
		for i := range s {
			if fast.order[i].svc.Key() != s[i].Key() || fast.order[i] != fast.current[s[i].Key()] {
				t.Fatalf("step %d: order[%d] is not the state's service", step, i)
			}
		}
	}
	if inOrder < 1000 {
		t.Errorf("only %d of 3000 states were planned in order", inOrder)
	}
}

func sortedKeys(keys []model.ServiceKey) []model.ServiceKey {
	return slices.SortedFunc(slices.Values(keys), compareKeys)
}

// benchState is services × endpoints with distinct VIPs.
func benchState(services, endpoints int) model.State {
	s := model.State{Services: make([]model.Service, services)}
	for i := range s.Services {
		eps := make([]model.Endpoint, endpoints)
		for j := range eps {
			eps[j] = model.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i % 250)}), Port: uint16(8000 + j)}
		}
		s.Services[i] = model.Service{Name: "svc" + strconv.Itoa(i), VIP: netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}),
			Port: 80, Protocol: model.TCP, Endpoints: eps}
	}
	return s
}

// One endpoint of a 10,000-service state changes, in a new Services slice
// that shares the unchanged services' endpoints (what the translator
// hands the dataplane): planned with the last state's order, and without
// it (one lookup per service), in the same run.
func BenchmarkPlanOneChange10k(b *testing.B) {
	for _, mode := range []string{"in-order", "lookup"} {
		b.Run(mode, func(b *testing.B) {
			pl := &planner{useOrder: mode == "in-order", nextID: 1}
			s := benchState(10000, 10)
			if _, err := pl.plan(s, Capacity{}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				s = model.State{Services: slices.Clone(s.Services)}
				k := i % len(s.Services)
				eps := slices.Clone(s.Services[k].Endpoints)
				eps[0].Weight = eps[0].Weight%2 + 1
				s.Services[k].Endpoints = eps
				b.StartTimer()
				p, err := pl.plan(s, Capacity{})
				if err != nil || len(p.changed) != 1 {
					b.Fatalf("changed %d, err %v", len(p.changed), err)
				}
			}
		})
	}
}
