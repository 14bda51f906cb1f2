package dataplane

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func ep(addr string, mods ...func(*Endpoint)) Endpoint {
	ap := netip.MustParseAddrPort(addr)
	e := Endpoint{Addr: ap.Addr(), Port: ap.Port()}
	for _, m := range mods {
		m(&e)
	}
	return e
}

func weight(w uint32) func(*Endpoint)   { return func(e *Endpoint) { e.Weight = w } }
func health(h Health) func(*Endpoint)   { return func(e *Endpoint) { e.Health = h } }
func priority(p uint32) func(*Endpoint) { return func(e *Endpoint) { e.Priority = p } }

func service(name, vip string, eps ...Endpoint) Service {
	return Service{Name: name, VIP: netip.MustParseAddr(vip), Port: 80, Protocol: TCP, Endpoints: eps}
}

func TestCompileRejectsInvalidStates(t *testing.T) {
	for _, tc := range []struct {
		name    string
		state   State
		caps    Capacity
		class   error
		mention string
	}{
		{"missing VIP", State{Services: []Service{{Name: "x", Port: 80, Protocol: TCP}}}, Capacity{}, ErrInvalidState, `service "x"`},
		{"port 0", State{Services: []Service{{Name: "x", VIP: netip.MustParseAddr("10.0.0.1"), Protocol: TCP}}}, Capacity{}, ErrInvalidState, "port 0"},
		{"protocol", State{Services: []Service{{Name: "x", VIP: netip.MustParseAddr("10.0.0.1"), Port: 1, Protocol: 1}}}, Capacity{}, ErrInvalidState, "TCP or UDP"},
		{"v4-mapped VIP", State{Services: []Service{service("m", "::ffff:10.0.0.1")}}, Capacity{}, ErrInvalidState, "use the IPv4 form 10.0.0.1"},
		{"loopback VIP", State{Services: []Service{service("lo", "127.0.0.5")}}, Capacity{}, ErrInvalidState, "loopback"},
		{"duplicate", State{Services: []Service{service("a", "10.0.0.1"), service("b", "10.0.0.1")}}, Capacity{}, ErrInvalidState, `service "b" (10.0.0.1:80/TCP): duplicate VIP:port/protocol, already used by service "a"`},
		{"endpoint family", State{Services: []Service{service("f", "10.0.0.1", ep("[fd00::1]:80"))}}, Capacity{}, ErrInvalidState, "endpoint 0 ([fd00::1]:80): address family differs"},
		{"endpoint port 0", State{Services: []Service{service("p", "10.0.0.1", ep("10.1.0.1:1"), ep("10.1.0.2:0"))}}, Capacity{}, ErrInvalidState, "endpoint 1 (10.1.0.2:0): port 0"},
		{"duplicate endpoint", State{Services: []Service{service("d", "10.0.0.1", ep("10.1.0.1:80"), ep("10.1.0.1:80"))}}, Capacity{}, ErrInvalidState, "duplicate of endpoint 0"},
		{"bad health", State{Services: []Service{service("h", "10.0.0.1", ep("10.1.0.1:80", health(9)))}}, Capacity{}, ErrInvalidState, "unknown health"},
		{"weight overflow", State{Services: []Service{service("w", "10.0.0.1", ep("10.1.0.1:80", weight(1<<31)), ep("10.1.0.2:80", weight(1<<31)))}}, Capacity{}, ErrInvalidState, "sum of endpoint weights"},
		{"services over capacity", State{Services: []Service{service("a", "10.0.0.1"), service("b", "10.0.0.2")}}, Capacity{Services: 1}, ErrCapacity, `service "b"`},
		{"backends over capacity", State{Services: []Service{
			service("a", "10.0.0.1", ep("10.1.0.1:80")),
			service("b", "10.0.0.2", ep("10.1.0.2:80"), ep("10.1.0.3:80")),
		}}, Capacity{Backends: 2}, ErrCapacity, `service "b" (10.0.0.2:80/TCP): backend capacity 2 exhausted`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compile(tc.state, tc.caps, nil)
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
	s := State{Services: []Service{service("a", "10.0.0.1",
		ep("10.1.0.1:80"), ep("10.1.0.2:80", health(HealthUnhealthy)), ep("10.1.0.3:80", priority(1)))}}
	if _, err := compile(s, Capacity{Backends: 1}, nil); err != nil {
		t.Errorf("only one endpoint is usable at the chosen priority, yet: %v", err)
	}
}

func TestActiveSet(t *testing.T) {
	for _, tc := range []struct {
		name  string
		eps   []Endpoint
		want  []string // addr:port=cumulative weight, in order
		total uint32
	}{
		{"no endpoints", nil, nil, 0},
		{"zero weight counts as one", []Endpoint{ep("10.1.0.2:80"), ep("10.1.0.1:80", weight(3))}, []string{"10.1.0.1:80=3", "10.1.0.2:80=4"}, 4},
		{"unusable dropped", []Endpoint{
			ep("10.1.0.1:80", health(HealthUnhealthy)), ep("10.1.0.2:80", health(HealthDraining)),
			ep("10.1.0.3:80", health(HealthHealthy), weight(2)), ep("10.1.0.4:80", health(HealthUnknown)),
		}, []string{"10.1.0.3:80=2", "10.1.0.4:80=3"}, 3},
		{"highest priority with a usable endpoint", []Endpoint{
			ep("10.1.0.1:80", health(HealthUnhealthy)), ep("10.1.0.2:80", priority(2)),
			ep("10.1.0.3:80", priority(1), weight(5)), ep("10.1.0.4:80", priority(1), health(HealthDraining)),
		}, []string{"10.1.0.3:80=5"}, 5},
		{"all unusable", []Endpoint{ep("10.1.0.1:80", health(HealthUnhealthy), priority(3))}, nil, 0},
		{"order by address then port", []Endpoint{ep("10.1.0.1:90"), ep("10.1.0.1:80"), ep("10.0.0.9:99")},
			[]string{"10.0.0.9:99=1", "10.1.0.1:80=2", "10.1.0.1:90=3"}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets, err := compile(State{Services: []Service{service("s", "10.0.0.1", tc.eps...)}}, Capacity{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			set := sets[ServiceKey{VIP: netip.MustParseAddr("10.0.0.1"), Port: 80, Protocol: TCP}]
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

func TestServiceIDsAreStable(t *testing.T) {
	key := func(vip string) ServiceKey {
		return ServiceKey{VIP: netip.MustParseAddr(vip), Port: 80, Protocol: TCP}
	}
	ids := func(sets map[ServiceKey]activeSet) map[ServiceKey]uint32 {
		m := map[ServiceKey]uint32{}
		for k, s := range sets {
			m[k] = s.ID
		}
		return m
	}
	first, err := compile(State{Services: []Service{service("b", "10.0.0.2"), service("a", "10.0.0.1"), service("c", "10.0.0.3")}}, Capacity{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := ids(first)
	if got[key("10.0.0.1")] != 1 || got[key("10.0.0.2")] != 2 || got[key("10.0.0.3")] != 3 {
		t.Fatalf("fresh ids not given in key order from 1: %v", got)
	}
	// Remove b, add d and e: a and c keep their ids, d reuses b's, e takes the next.
	second, err := compile(State{Services: []Service{service("e", "10.0.0.5"), service("c", "10.0.0.3"), service("d", "10.0.0.4"), service("a", "10.0.0.1")}}, Capacity{}, got)
	if err != nil {
		t.Fatal(err)
	}
	got2 := ids(second)
	want := map[ServiceKey]uint32{key("10.0.0.1"): 1, key("10.0.0.3"): 3, key("10.0.0.4"): 2, key("10.0.0.5"): 4}
	for k, id := range want {
		if got2[k] != id {
			t.Errorf("id of %v = %d, want %d (all: %v)", k, got2[k], id, got2)
		}
	}
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
