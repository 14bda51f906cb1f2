package identity_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
)

const (
	webID   = "spiffe://cluster.local/ns/shop/sa/web"
	dbID    = "spiffe://cluster.local/ns/shop/sa/db"
	cacheID = "spiffe://cluster.local/ns/shop/sa/cache"
	jobID   = "spiffe://cluster.local/ns/batch/sa/job"
)

var (
	web   = &model.Workload{Name: "web-1", Namespace: "shop", ServiceAccount: "web", SPIFFEID: webID, Identity: 100}
	db    = &model.Workload{Name: "db-0", Namespace: "shop", ServiceAccount: "db", SPIFFEID: dbID, Identity: 200}
	cache = &model.Workload{Name: "cache-0", Namespace: "shop", ServiceAccount: "cache", SPIFFEID: cacheID} // no number given
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(a string, w *model.Workload) model.Endpoint {
	return model.Endpoint{Addr: addr(a), Port: 8080, Workload: w}
}

func svc(name, vip string, eps ...model.Endpoint) model.Service {
	return model.Service{Name: name, VIP: addr(vip), Port: 80, Protocol: model.TCP, Endpoints: eps}
}

func local(ns, name, sa string, cgroupID uint64, ips ...string) identity.Local {
	w := identity.Workload{
		Name: name, Namespace: ns, ServiceAccount: sa,
		SPIFFEID: "spiffe://cluster.local/ns/" + ns + "/sa/" + sa,
		Cgroup:   "sluice/" + name,
	}
	for _, ip := range ips {
		w.Addrs = append(w.Addrs, addr(ip))
	}
	return identity.Local{Workload: w, CgroupID: cgroupID}
}

// derivedNumbers is what Assign gives the IDs of a Build whose only given
// numbers are web's and db's.
func derivedNumbers(t *testing.T, ids ...string) map[string]uint32 {
	t.Helper()
	reqs := []identity.Request{{SPIFFEID: webID, Given: 100}, {SPIFFEID: dbID, Given: 200}}
	for _, id := range ids {
		reqs = append(reqs, identity.Request{SPIFFEID: id})
	}
	got, err := identity.Assign(reqs)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if got[id] < identity.FirstDerived {
			t.Fatalf("%s derived %d, below %d", id, got[id], identity.FirstDerived)
		}
	}
	return got
}

func TestBuild(t *testing.T) {
	n := derivedNumbers(t, cacheID, jobID)
	services := []model.Service{
		svc("web", "10.96.0.1", ep("10.244.1.5", web), ep("10.244.2.5", web), ep("10.244.3.5", nil)),
		{
			Name: "db", VIP: addr("fd00:96::2"), Port: 5432, Protocol: model.TCP,
			Splits: []model.Split{
				{Name: "primary", Weight: 1, Endpoints: []model.Endpoint{ep("fd00:244:1::7", db)}},
				{Name: "replica", Weight: 1, Endpoints: []model.Endpoint{ep("fd00:244:2::7", db), ep("fd00:244:2::8", &model.Workload{Name: "anonymous"})}},
			},
		},
		svc("cache", "10.96.0.3", ep("10.244.1.9", cache)),
		svc("web-internal", "10.96.0.4", ep("10.244.1.5", web)), // the same address, the same identity
	}
	locals := []identity.Local{
		local("shop", "web-1", "web", 900, "10.244.1.5"), // takes web's given number
		local("batch", "job-7", "job", 300, "10.244.1.7", "fd00:244:1::77"),
	}
	locals[1].CgroupPath = "/sys/fs/cgroup/sluice/job-7"
	ids, stats, err := identity.Build(services, locals)
	if err != nil {
		t.Fatal(err)
	}
	want := model.Identities{
		Names: map[uint32]string{100: webID, 200: dbID, n[cacheID]: cacheID, n[jobID]: jobID},
		Cgroups: []model.CgroupIdentity{
			{CgroupID: 300, Path: "/sys/fs/cgroup/sluice/job-7", Identity: n[jobID], Addrs: []netip.Addr{addr("10.244.1.7"), addr("fd00:244:1::77")}},
			{CgroupID: 900, Path: "sluice/web-1", Identity: 100, Addrs: []netip.Addr{addr("10.244.1.5")}},
		},
		Addrs: []model.AddrIdentity{
			{Addr: addr("10.244.1.5"), Identity: 100},
			{Addr: addr("10.244.1.7"), Identity: n[jobID]},
			{Addr: addr("10.244.1.9"), Identity: n[cacheID]},
			{Addr: addr("10.244.2.5"), Identity: 100},
			{Addr: addr("fd00:244:1::7"), Identity: 200},
			{Addr: addr("fd00:244:1::77"), Identity: n[jobID]},
			{Addr: addr("fd00:244:2::7"), Identity: 200},
		},
	}
	if !reflect.DeepEqual(ids, want) {
		t.Errorf("got\n%+v\nwant\n%+v", ids, want)
	}
	if want := (identity.Stats{SPIFFEIDs: 4, Derived: 2}); !reflect.DeepEqual(stats, want) {
		t.Errorf("stats %+v, want %+v", stats, want)
	}

	// The result shares no slice with the input.
	ids.Cgroups[0].Addrs[0] = addr("192.0.2.1")
	if locals[1].Workload.Addrs[0] != addr("10.244.1.7") {
		t.Error("Build's cgroup addresses alias the local workload's")
	}
}

func TestBuildAmbiguousAddrs(t *testing.T) {
	n := derivedNumbers(t, cacheID, jobID)
	services := []model.Service{
		// Host-network web and db share the node address 192.168.0.10.
		svc("web", "10.96.0.1", ep("192.168.0.10", web), ep("10.244.2.5", web)),
		svc("db", "10.96.0.2", ep("192.168.0.10", db)),
		// A stale endpoint of cache has the address a local job now has.
		svc("cache", "10.96.0.3", ep("10.244.1.7", cache), ep("fd00::1", cache)),
	}
	locals := []identity.Local{local("batch", "job-7", "job", 300, "10.244.1.7")}
	ids, stats, err := identity.Build(services, locals)
	if err != nil {
		t.Fatal(err)
	}
	wantAddrs := []model.AddrIdentity{
		{Addr: addr("10.244.2.5"), Identity: 100},
		{Addr: addr("fd00::1"), Identity: n[cacheID]},
	}
	if !reflect.DeepEqual(ids.Addrs, wantAddrs) {
		t.Errorf("addrs %+v, want %+v", ids.Addrs, wantAddrs)
	}
	if want := []netip.Addr{addr("10.244.1.7"), addr("192.168.0.10")}; !reflect.DeepEqual(stats.AmbiguousAddrs, want) {
		t.Errorf("ambiguous %v, want %v", stats.AmbiguousAddrs, want)
	}
	// The local workload keeps its own address for CIDR principals.
	if want := []netip.Addr{addr("10.244.1.7")}; !reflect.DeepEqual(ids.Cgroups[0].Addrs, want) {
		t.Errorf("cgroup addrs %v, want %v", ids.Cgroups[0].Addrs, want)
	}
	if len(ids.Names) != 4 {
		t.Errorf("names %v: an ambiguous address takes no identity away", ids.Names)
	}
}

func TestBuildLocalOnly(t *testing.T) {
	ids, stats, err := identity.Build(nil, []identity.Local{local("batch", "job-7", "job", 300)})
	if err != nil {
		t.Fatal(err)
	}
	alone, err := identity.Assign([]identity.Request{{SPIFFEID: jobID}})
	if err != nil {
		t.Fatal(err)
	}
	want := model.Identities{
		Names:   map[uint32]string{alone[jobID]: jobID},
		Cgroups: []model.CgroupIdentity{{CgroupID: 300, Path: "sluice/job-7", Identity: alone[jobID]}},
	}
	if !reflect.DeepEqual(ids, want) || !reflect.DeepEqual(stats, identity.Stats{SPIFFEIDs: 1, Derived: 1}) {
		t.Errorf("got %+v, %+v; want %+v", ids, stats, want)
	}
}

func TestBuildEmpty(t *testing.T) {
	ids, stats, err := identity.Build([]model.Service{svc("web", "10.96.0.1", ep("10.244.1.5", nil))}, nil)
	if err != nil || !reflect.DeepEqual(ids, model.Identities{}) || !reflect.DeepEqual(stats, identity.Stats{}) {
		t.Errorf("got %+v, %+v, %v; want the zero identities", ids, stats, err)
	}
}

func TestBuildDeterministic(t *testing.T) {
	var services []model.Service
	for i := range 200 {
		w := &model.Workload{SPIFFEID: fmt.Sprintf("spiffe://cluster.local/ns/ns%d/sa/sa%d", i%7, i)}
		if i%3 == 0 {
			w.Identity = uint32(i + 1)
		}
		s := svc(fmt.Sprint("s", i), fmt.Sprintf("10.96.%d.%d", i/256, i%256))
		for j := range 5 {
			// Addresses shared between services, some by other identities.
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("10.244.%d.%d", (i+j)%50, j), w))
		}
		services = append(services, s)
	}
	locals := []identity.Local{
		local("ns1", "a", "sa1", 10, "10.244.0.0"),
		local("ns2", "b", "other", 5, "10.1.0.1"),
		local("ns3", "c", "sa3", 7),
	}
	first, firstStats, err := identity.Build(services, locals)
	if err != nil {
		t.Fatal(err)
	}
	again, againStats, _ := identity.Build(services, locals)
	if !reflect.DeepEqual(first, again) || !reflect.DeepEqual(firstStats, againStats) {
		t.Error("two builds of the same input differ")
	}
	// The order of local workloads does not matter either.
	reversed := []identity.Local{locals[2], locals[1], locals[0]}
	if third, _, _ := identity.Build(services, reversed); !reflect.DeepEqual(first, third) {
		t.Error("reordering the local workloads changes the identities")
	}
	if len(firstStats.AmbiguousAddrs) == 0 {
		t.Error("test input has no ambiguous address")
	}
}

func TestBuildErrors(t *testing.T) {
	bad := &model.Workload{SPIFFEID: "spiffe://cluster.local/web"}
	for _, tc := range []struct {
		name     string
		services []model.Service
		locals   []identity.Local
		want     string
	}{
		{
			"one ID given two numbers",
			[]model.Service{
				svc("web", "10.96.0.1", ep("10.244.1.5", web)),
				svc("web2", "10.96.0.2", ep("10.244.1.6", &model.Workload{SPIFFEID: webID, Identity: 101})),
			},
			nil,
			`identity: spiffe://cluster.local/ns/shop/sa/web is given two numbers, 100 and 101 (at service "web" (10.96.0.1:80/TCP) endpoint 0 (10.244.1.5:8080) and service "web2" (10.96.0.2:80/TCP) endpoint 0 (10.244.1.6:8080))`,
		},
		{
			"one ID given a number and none",
			[]model.Service{{
				Name: "web", VIP: addr("10.96.0.1"), Port: 80, Protocol: model.TCP,
				Splits: []model.Split{
					{Name: "a", Endpoints: []model.Endpoint{ep("10.244.1.5", web)}},
					{Name: "b", Endpoints: []model.Endpoint{ep("10.244.1.6", nil), ep("10.244.1.7", &model.Workload{SPIFFEID: webID})}},
				},
			}},
			nil,
			`identity: spiffe://cluster.local/ns/shop/sa/web is given two numbers, 0 and 100 (at service "web" (10.96.0.1:80/TCP) split "a" endpoint 0 (10.244.1.5:8080) and service "web" (10.96.0.1:80/TCP) split "b" endpoint 1 (10.244.1.7:8080))`,
		},
		{
			"two IDs given one number",
			[]model.Service{
				svc("web", "10.96.0.1", ep("10.244.1.5", web)),
				svc("db", "10.96.0.2", ep("10.244.1.6", &model.Workload{SPIFFEID: dbID, Identity: 100})),
			},
			nil,
			`identity: spiffe://cluster.local/ns/shop/sa/db and spiffe://cluster.local/ns/shop/sa/web are both given 100 (at service "web" (10.96.0.1:80/TCP) endpoint 0 (10.244.1.5:8080) and service "db" (10.96.0.2:80/TCP) endpoint 0 (10.244.1.6:8080))`,
		},
		{
			"given number in the derived range",
			[]model.Service{svc("web", "10.96.0.1", ep("10.244.1.5", cache), ep("10.244.1.6", &model.Workload{SPIFFEID: webID, Identity: identity.FirstDerived}))},
			nil,
			`numbers the control plane gives must be 1..2147483647 (2147483648 and up are derived) (at service "web" (10.96.0.1:80/TCP) endpoint 1 (10.244.1.6:8080))`,
		},
		{
			"not a workload SPIFFE ID",
			[]model.Service{svc("web", "10.96.0.1", ep("10.244.1.5", web), ep("10.244.1.6", bad))},
			nil,
			`is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>) (at service "web" (10.96.0.1:80/TCP) endpoint 1 (10.244.1.6:8080))`,
		},
		{
			"local not a SPIFFE ID",
			nil,
			[]identity.Local{{Workload: identity.Workload{Name: "a", Namespace: "b", SPIFFEID: "web", Cgroup: "a"}, CgroupID: 1}},
			`identity: "web" is not a SPIFFE ID: scheme is missing or invalid (at local workload b/a (cgroup a))`,
		},
		{
			"local without SPIFFE ID",
			nil,
			[]identity.Local{{Workload: identity.Workload{Name: "a", Namespace: "b", Cgroup: "a"}, CgroupID: 1}},
			"identity: local workload b/a (cgroup a) has no SPIFFE ID",
		},
		{
			"local without cgroup id",
			nil,
			[]identity.Local{local("batch", "job-7", "job", 0)},
			"identity: local workload batch/job-7 (cgroup sluice/job-7) has no cgroup id",
		},
		{
			"two locals with one cgroup id",
			nil,
			[]identity.Local{local("batch", "job-7", "job", 3), local("batch", "job-8", "job", 3)},
			"identity: local workload batch/job-7 (cgroup sluice/job-7) and local workload batch/job-8 (cgroup sluice/job-8) have the same cgroup id 3",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, _, err := identity.Build(tc.services, tc.locals)
			if err == nil {
				t.Fatalf("no error; got %+v", ids)
			}
			if !errors.Is(err, identity.ErrInvalidIdentities) {
				t.Errorf("error %v does not match ErrInvalidIdentities", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error\n%s\nwant it to contain\n%s", err, tc.want)
			}
		})
	}
}

// benchServices is a mesh of 10,000 services of 10 endpoints each; the
// endpoints of a service are one workload's and share its *Workload.
// Every given-th workload has a number from the control plane (none if
// given is 0); the others are derived.
func benchServices(given int) []model.Service {
	services := make([]model.Service, 10000)
	for i := range services {
		w := &model.Workload{Name: fmt.Sprint("w", i), Namespace: fmt.Sprint("ns", i%100), ServiceAccount: fmt.Sprint("sa", i)}
		w.SPIFFEID = "spiffe://cluster.local/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
		if given > 0 && i%given == 0 {
			w.Identity = uint32(i + 1)
		}
		eps := make([]model.Endpoint, 10)
		for j := range eps {
			n := i*10 + j
			eps[j] = model.Endpoint{Addr: netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), Port: 8080, Workload: w}
		}
		services[i] = model.Service{Name: fmt.Sprint("s", i), VIP: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: model.TCP, Endpoints: eps}
	}
	return services
}

func BenchmarkBuild(b *testing.B) {
	var locals []identity.Local
	for i := range 100 {
		locals = append(locals, local("local", fmt.Sprint("w", i), fmt.Sprint("sa", i), uint64(i+1), fmt.Sprintf("10.250.0.%d", i)))
	}
	for _, bc := range []struct {
		name  string
		given int
	}{{"derived", 0}, {"given", 1}} {
		services := benchServices(bc.given)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := identity.Build(services, locals); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestBuildListed checks that a listed workload that is no endpoint (a
// client only) is known by its address on every node, with the same
// number whichever node runs it.
func TestBuildListed(t *testing.T) {
	services := []model.Service{svc("db", "10.96.0.2", ep("10.244.2.10", db))}
	batch := local("jobs", "batch", "batch", 300, "10.244.1.11")
	listed := []identity.Workload{batch.Workload}
	onA, _, err := identity.BuildListed(services, nil, []identity.Local{batch}, listed) // batch's node
	if err != nil {
		t.Fatal(err)
	}
	onB, _, err := identity.BuildListed(services, nil, nil, listed) // db's node
	if err != nil {
		t.Fatal(err)
	}
	want := derivedNumbers(t, batch.Workload.SPIFFEID)[batch.Workload.SPIFFEID]
	if len(onA.Cgroups) != 1 || onA.Cgroups[0].Identity != want {
		t.Fatalf("batch's cgroup on its node: %+v, want identity %d", onA.Cgroups, want)
	}
	for node, ids := range map[string]model.Identities{"a": onA, "b": onB} {
		found := false
		for _, a := range ids.Addrs {
			if a.Addr == addr("10.244.1.11") {
				found = a.Identity == want
			}
		}
		if !found || ids.Names[want] != batch.Workload.SPIFFEID {
			t.Errorf("node %s: batch's address %v and names %v, want 10.244.1.11 → %d", node, ids.Addrs, ids.Names, want)
		}
	}
	// Without the listing, db's node does not know batch at all.
	if alone, _, _ := identity.Build(services, nil); len(alone.Addrs) != 1 {
		t.Errorf("db's node without the listing knows %v", alone.Addrs)
	}
	// A listed workload without a SPIFFE ID is an error naming it.
	_, _, err = identity.BuildListed(nil, nil, nil, []identity.Workload{{Name: "x", Namespace: "shop"}})
	if err == nil || !strings.Contains(err.Error(), "listed workload shop/x has no SPIFFE ID") {
		t.Errorf("error %v", err)
	}
}

// TestBuildFastPath checks that local workloads keep their fast-path
// settings, except on without an address, which the fast path cannot find.
func TestBuildFastPath(t *testing.T) {
	locals := []identity.Local{
		local("ns1", "on", "sa1", 1, "10.244.0.1"),
		local("ns1", "off", "sa2", 2, "10.244.0.2"),
		local("ns1", "unset", "sa3", 3, "10.244.0.3"),
		local("ns1", "on-no-ips", "sa4", 4),
	}
	locals[0].FastPath, locals[1].FastPath, locals[3].FastPath = model.FastPathOn, model.FastPathOff, model.FastPathOn
	ids, _, err := identity.Build(nil, locals)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]model.FastPath{1: model.FastPathOn, 2: model.FastPathOff, 3: model.FastPathUnset, 4: model.FastPathUnset}
	for _, cg := range ids.Cgroups {
		if cg.FastPath != want[cg.CgroupID] {
			t.Errorf("cgroup %d (%s): fast path %v, want %v", cg.CgroupID, cg.Path, cg.FastPath, want[cg.CgroupID])
		}
	}
	if len(ids.Cgroups) != len(want) {
		t.Errorf("%d cgroups, want %d", len(ids.Cgroups), len(want))
	}
}

// TestBuildPeers checks that a control plane's directory workload (a
// client that is no endpoint) is known by its address, with the number
// the control plane gives it, that the local workload of the same SPIFFE
// ID takes that number, and that a contradiction names the directory.
func TestBuildPeers(t *testing.T) {
	services := []model.Service{svc("db", "10.96.0.2", ep("10.244.2.10", db))}
	batch := local("jobs", "batch", "batch", 300, "10.244.1.11")
	w := &model.Workload{Name: "batch-0", Namespace: "jobs", ServiceAccount: "batch", SPIFFEID: batch.Workload.SPIFFEID, Identity: 4242}
	peers := []model.Peer{{Addr: addr("10.244.1.11"), Workload: w}, {Addr: addr("fd00::11"), Workload: w}}
	for node, locals := range map[string][]identity.Local{"batch's": {batch}, "db's": nil} {
		ids, _, err := identity.BuildListed(services, peers, locals, nil)
		if err != nil {
			t.Fatalf("%s node: %v", node, err)
		}
		known := map[netip.Addr]uint32{}
		for _, a := range ids.Addrs {
			known[a.Addr] = a.Identity
		}
		if known[addr("10.244.1.11")] != 4242 || known[addr("fd00::11")] != 4242 || ids.Names[4242] != w.SPIFFEID {
			t.Errorf("%s node: addresses %v, names %v; want both of batch's addresses → 4242", node, ids.Addrs, ids.Names)
		}
		if len(locals) > 0 && (len(ids.Cgroups) != 1 || ids.Cgroups[0].Identity != 4242) {
			t.Errorf("%s node: cgroups %+v, want batch's with the directory's number 4242", node, ids.Cgroups)
		}
	}
	// A node's L7 proxy claims no identity: it speaks for its clients.
	proxy := model.Peer{Addr: addr("192.168.0.2"), Workload: &model.Workload{SPIFFEID: "spiffe://td/ns/sluice/sa/agent", L7Proxy: true}}
	ids, _, err := identity.BuildListed(services, append(slices.Clone(peers), proxy), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ids.Addrs {
		if a.Addr == proxy.Addr {
			t.Errorf("the L7 proxy's address is bound to identity %d", a.Identity)
		}
	}
	for _, name := range ids.Names {
		if name == proxy.Workload.SPIFFEID {
			t.Errorf("the L7 proxy's SPIFFE ID got a number")
		}
	}
	bad := &model.Workload{Name: "batch-1", Namespace: "jobs", SPIFFEID: w.SPIFFEID, Identity: 4243}
	_, _, err = identity.BuildListed(services, append(peers, model.Peer{Addr: addr("10.244.1.12"), Workload: bad}), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "directory workload jobs/batch-1 (10.244.1.12)") || !strings.Contains(err.Error(), "4242") {
		t.Errorf("two numbers for one SPIFFE ID: error %v, want one naming the directory workload", err)
	}
	_, _, err = identity.BuildListed(nil, []model.Peer{{Addr: addr("10.244.1.13"), Workload: &model.Workload{Name: "x", Namespace: "jobs"}}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "directory workload jobs/x (10.244.1.13) has no SPIFFE ID") {
		t.Errorf("a peer without SPIFFE ID: error %v", err)
	}
}
