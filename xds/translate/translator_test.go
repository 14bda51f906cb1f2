package translate_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	httpupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// sameAsTranslate translates r with tr and with Translate and fails unless
// both give the same result or the same error. It returns Translate's error.
func sameAsTranslate(t testing.TB, what string, tr *translate.Translator, r translate.Resources) error {
	t.Helper()
	got, gotErr := tr.Translate(r)
	want, wantErr := translate.Translate(r)
	if errText(gotErr) != errText(wantErr) || !reflect.DeepEqual(gotErr, wantErr) {
		t.Fatalf("%s: Translator error %v, Translate error %v", what, gotErr, wantErr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: Translator and Translate differ:\nservices %s\nwant     %s\nmissing %q, want %q\nignored %v\nwant    %v",
			what, dump(got.State.Services), dump(want.State.Services), got.Missing, want.Missing, got.Ignored, want.Ignored)
	}
	if wantErr == nil {
		if got, want := tr.EDSNames(), translate.EDSNames(r); !slices.Equal(got, want) {
			t.Fatalf("%s: Translator.EDSNames %q, EDSNames %q", what, got, want)
		}
		if got, want := tr.RDSNames(), translate.RDSNames(r); !slices.Equal(got, want) {
			t.Fatalf("%s: Translator.RDSNames %q, RDSNames %q", what, got, want)
		}
	}
	return wantErr
}

// sameStaged stages r with tr as the xDS client does, and checks the
// result against Translate: the hint names exactly what changed since base
// (tr's last accepted set), and every other name comes without its message
// (nil), so tr fails the check if it reads one. The translation is accepted
// only if accept is set; it returns the set tr has accepted after the call.
//
// With prepared set, the changed resources are prepared on their own and
// staged with StagePrepared instead, as the xDS client does.
func sameStaged(t testing.TB, what string, tr *translate.Translator, base, r translate.Resources, accept, prepared bool) translate.Resources {
	t.Helper()
	h := &translate.Hint{
		Listeners: changedNames(base.Listeners, r.Listeners),
		Clusters:  changedNames(base.Clusters, r.Clusters),
		Endpoints: changedNames(base.Endpoints, r.Endpoints),
		Routes:    changedNames(base.Routes, r.Routes),
	}
	in := translate.Resources{
		Listeners: withoutUnchanged(base.Listeners, r.Listeners),
		Clusters:  withoutUnchanged(base.Clusters, r.Clusters),
		Endpoints: withoutUnchanged(base.Endpoints, r.Endpoints),
		Routes:    withoutUnchanged(base.Routes, r.Routes),
	}
	var got translate.Result
	var commit func()
	var gotErr error
	if prepared {
		var p translate.Preparer
		got, commit, gotErr = tr.StagePrepared(translate.PreparedResources{
			Listeners: prepare(in.Listeners, p.Listener),
			Clusters:  prepare(in.Clusters, p.Cluster),
			Endpoints: prepare(in.Endpoints, p.Assignment),
			Routes:    prepare(in.Routes, p.Route),
		}, *h)
	} else {
		got, commit, gotErr = tr.Stage(in, h)
	}
	want, wantErr := translate.Translate(r)
	if errText(gotErr) != errText(wantErr) {
		t.Fatalf("%s: staged Translator error %v, Translate error %v", what, gotErr, wantErr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: staged Translator and Translate differ:\nservices %s\nwant     %s\nmissing %q, want %q\nignored %v\nwant    %v",
			what, dump(got.State.Services), dump(want.State.Services), got.Missing, want.Missing, got.Ignored, want.Ignored)
	}
	if gotErr != nil || !accept {
		return base
	}
	commit()
	if got, want := tr.EDSNames(), translate.EDSNames(r); !slices.Equal(got, want) {
		t.Fatalf("%s: staged Translator.EDSNames %q, EDSNames %q", what, got, want)
	}
	if got, want := tr.RDSNames(), translate.RDSNames(r); !slices.Equal(got, want) {
		t.Fatalf("%s: staged Translator.RDSNames %q, RDSNames %q", what, got, want)
	}
	return copyMaps(r)
}

// prepare prepares the messages of m that are not nil.
func prepare[M comparable](m map[string]M, f func(string, M) *translate.Prepared) map[string]*translate.Prepared {
	var none M
	out := make(map[string]*translate.Prepared)
	for name, msg := range m {
		if msg != none {
			out[name] = f(name, msg)
		}
	}
	return out
}

// withoutUnchanged returns now with a nil message for every name that has
// the same message in base.
func withoutUnchanged[M comparable](base, now map[string]M) map[string]M {
	var none M
	out := make(map[string]M, len(now))
	for name, m := range now {
		if old, ok := base[name]; ok && old == m {
			m = none
		}
		out[name] = m
	}
	return out
}

// sameWithHint checks that a Translator given the exact changes since
// base (its last successful set) agrees with Translate.
func sameWithHint(t testing.TB, what string, tr *translate.Translator, base, r translate.Resources) error {
	t.Helper()
	var h *translate.Hint
	if base.Listeners != nil {
		h = &translate.Hint{
			Listeners: changedNames(base.Listeners, r.Listeners),
			Clusters:  changedNames(base.Clusters, r.Clusters),
			Endpoints: changedNames(base.Endpoints, r.Endpoints),
			Routes:    changedNames(base.Routes, r.Routes),
		}
	}
	got, gotErr := tr.TranslateHint(r, h)
	want, wantErr := translate.Translate(r)
	if errText(gotErr) != errText(wantErr) {
		t.Fatalf("%s: hinted Translator error %v, Translate error %v", what, gotErr, wantErr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: hinted Translator and Translate differ:\nservices %s\nwant     %s", what, dump(got.State.Services), dump(want.State.Services))
	}
	return wantErr
}

// changedNames lists the names whose message differs (by pointer) or that
// are in one map only.
func changedNames[M comparable](a, b map[string]M) []string {
	var out []string
	for name, m := range b {
		if old, ok := a[name]; !ok || old != m {
			out = append(out, name)
		}
	}
	for name := range a {
		if _, ok := b[name]; !ok {
			out = append(out, name)
		}
	}
	return out
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// samePointers returns next with the messages of prev wherever they are
// equal, as a client that keeps unchanged resources does.
func samePointers(prev, next translate.Resources) translate.Resources {
	return translate.Resources{
		Listeners: keepEqual(prev.Listeners, next.Listeners),
		Clusters:  keepEqual(prev.Clusters, next.Clusters),
		Endpoints: keepEqual(prev.Endpoints, next.Endpoints),
		Routes:    keepEqual(prev.Routes, next.Routes),
	}
}

// copyMaps returns r with its maps copied (not the messages).
func copyMaps(r translate.Resources) translate.Resources {
	return translate.Resources{
		Listeners: maps.Clone(r.Listeners),
		Clusters:  maps.Clone(r.Clusters),
		Endpoints: maps.Clone(r.Endpoints),
		Routes:    maps.Clone(r.Routes),
	}
}

func keepEqual[M interface {
	proto.Message
	comparable
}](prev, next map[string]M) map[string]M {
	if next == nil {
		return nil
	}
	out := make(map[string]M, len(next))
	var zero M
	for name, m := range next {
		if p, ok := prev[name]; ok && p != zero && m != zero && proto.Equal(p, m) {
			m = p
		}
		out[name] = m
	}
	return out
}

// checkTranslator checks a Translator against Translate on changed, a change
// of demo(): from demo to changed and back.
func checkTranslator(t *testing.T, changed translate.Resources) {
	t.Helper()
	tr := translate.NewTranslator()
	base := demo()
	if err := sameAsTranslate(t, "demo", tr, base); err != nil {
		t.Fatal(err)
	}
	sameAsTranslate(t, "changed", tr, samePointers(base, changed))
	sameAsTranslate(t, "demo again", tr, base)
}

// sim is a mesh of a few hundred resources under random change.
type sim struct {
	rng   *rand.Rand
	r     translate.Resources
	valid bool // make no resource that is refused
}

// refused reports whether to make a resource that is refused, one time in n.
func (s *sim) refused(n int) bool { return !s.valid && s.rng.IntN(n) == 0 }

const (
	simListeners = 150
	simClusters  = 80
	simShared    = 8 // EDS service names shared by several clusters
)

func (s *sim) clusterName() string { return fmt.Sprintf("c%d", s.rng.IntN(simClusters)) }

// assignmentName is a name an EDS cluster may read.
func (s *sim) assignmentName() string {
	if s.rng.IntN(5) == 0 {
		return fmt.Sprintf("shared%d", s.rng.IntN(simShared))
	}
	return s.clusterName()
}

func (s *sim) vip(i int) string {
	if s.refused(40) { // another listener's VIP: a duplicate unless the port differs
		i = s.rng.IntN(simListeners)
	}
	return fmt.Sprintf("10.96.%d.%d", i/200, i%200+1)
}

func (s *sim) listener(i int) *listenerv3.Listener {
	name := fmt.Sprintf("l%03d", i)
	proxy := func() *listenerv3.Listener {
		tp := tcpProxy(s.clusterName())
		if s.rng.IntN(3) == 0 {
			a, b := s.clusterName(), s.clusterName()
			if a == b && !s.refused(4) { // else a cluster listed twice
				b += "x" // a cluster that never exists
			}
			tp = weighted(a, s.rng.IntN(3), b, 1+s.rng.IntN(100))
		}
		if s.rng.IntN(4) == 0 {
			tp.IdleTimeout = durationpb.New(0) // ignored
		}
		return tcpListener(name, s.vip(i), 80, tp)
	}
	switch k := s.rng.IntN(20); {
	case s.refused(30):
		return tcpListener(name, s.vip(i), 0, tcpProxy(s.clusterName())) // port 0
	case s.refused(30):
		l := proxy()
		l.FilterChains[0].Filters[0] = filter("hcm", &hcmv3.HttpConnectionManager{StatPrefix: "http"})
		return l
	case k < 11:
		return proxy()
	case k < 14:
		return s.httpListener(i, name)
	case k < 17: // dual stack
		l := proxy()
		l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr(fmt.Sprintf("fd00:96::%x", i+1), 80)}}
		return l
	default:
		return udpListener(name, s.vip(i), 53, &udpproxyv3.UdpProxyConfig{StatPrefix: "dns", RouteSpecifier: udpMatcher(s.clusterName())})
	}
}

func (s *sim) cluster(name string) *clusterv3.Cluster {
	var c *clusterv3.Cluster
	switch k := s.rng.IntN(20); {
	case s.refused(25):
		c = edsCluster(name, "")
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	case k < 13:
		c = edsCluster(name, "")
	case k < 17:
		c = edsCluster(name, fmt.Sprintf("shared%d", s.rng.IntN(simShared)))
	default:
		c = staticCluster(name, s.endpoints(0)...)
	}
	if s.rng.IntN(4) == 0 {
		c.ConnectTimeout = durationpb.New(1) // ignored
	}
	if s.rng.IntN(4) == 0 {
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN // counted
	}
	// The upstream protocol of the L7 services using it.
	switch k := s.rng.IntN(8); {
	case s.refused(30):
		withHTTPOptions(c, &httpupstreamv3.HttpProtocolOptions{}) // no protocol
	case k == 0:
		withHTTPOptions(c, explicitHTTP2(nil))
	case k == 1:
		c.ProtocolSelection = clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL
	}
	return c
}

// endpoints are a few endpoints, sometimes one listed twice (refused),
// sometimes of IPv6 (which a single-stack IPv4 service refuses, a dual-stack
// one takes).
// Endpoints of different localities come from different nets.
func (s *sim) endpoints(locality int) []*endpointv3.LbEndpoint {
	eps := make([]*endpointv3.LbEndpoint, s.rng.IntN(5))
	first := s.rng.IntN(200)
	for i := range eps {
		addr := fmt.Sprintf("10.%d.%d.%d", 244+locality, first/100, first%100+i)
		if s.refused(30) {
			addr = fmt.Sprintf("fd00:%d::%x", 244+locality, 1+first+i)
		}
		if i > 0 && s.refused(30) {
			addr = fmt.Sprintf("10.%d.%d.%d", 244+locality, first/100, first%100)
		}
		eps[i] = lbEndpoint(addr, 8000)
		if s.rng.IntN(3) == 0 {
			withWeight(eps[i], uint32(s.rng.IntN(5)))
		}
		if s.rng.IntN(5) == 0 {
			withHealth(eps[i], corev3.HealthStatus(s.rng.IntN(6)))
		}
		if s.rng.IntN(10) == 0 {
			withWorkload(eps[i], map[string]any{"namespace": "ns", "identity": float64(s.rng.IntN(3))})
		}
	}
	return eps
}

func (s *sim) assignment(name string) *endpointv3.ClusterLoadAssignment {
	old := s.r.Endpoints[name]
	if old != nil && len(old.GetEndpoints()) > 0 && len(old.Endpoints[0].LbEndpoints) > 0 && s.rng.IntN(2) == 0 {
		// One endpoint's weight changes, as most EDS updates go.
		a := proto.Clone(old).(*endpointv3.ClusterLoadAssignment)
		lbes := a.Endpoints[0].LbEndpoints
		lbes[s.rng.IntN(len(lbes))].LoadBalancingWeight = wrapperspb.UInt32(uint32(s.rng.IntN(10)))
		return a
	}
	a := cla(name, s.endpoints(0)...)
	if s.rng.IntN(8) == 0 {
		a.Endpoints = append(a.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality: &corev3.Locality{Zone: "b"}, Priority: 1, LbEndpoints: s.endpoints(1),
		})
	}
	if s.rng.IntN(10) == 0 {
		a.Policy = &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(140)} // ignored
	}
	if s.refused(40) {
		a.NamedEndpoints = map[string]*endpointv3.Endpoint{"x": {}}
	}
	return a
}

// pick returns the name of a resource of m, or "" if there is none.
func pick[M any](s *sim, m map[string]M) string {
	if len(m) == 0 {
		return ""
	}
	names := sortedNames(m) // not map order: the changes must depend on the seed alone
	return names[s.rng.IntN(len(names))]
}

// again replaces a resource of m with a copy: a new pointer, the same
// content.
func again[M proto.Message](s *sim, m map[string]M) {
	if name := pick(s, m); name != "" {
		m[name] = proto.Clone(m[name]).(M)
	}
}

func drop[M any](s *sim, m map[string]M) {
	delete(m, pick(s, m))
}

// change makes one random change to s.r.
func (s *sim) change() {
	r := &s.r
	switch k := s.rng.IntN(110); {
	case k >= 100:
		s.changeRoutes()
	case k < 20:
		i := s.rng.IntN(simListeners)
		r.Listeners[fmt.Sprintf("l%03d", i)] = s.listener(i)
	case k < 25:
		drop(s, r.Listeners)
	case k < 40:
		name := s.clusterName()
		r.Clusters[name] = s.cluster(name)
	case k < 44:
		drop(s, r.Clusters)
	case k < 75:
		name := s.assignmentName()
		r.Endpoints[name] = s.assignment(name)
	case k < 79:
		drop(s, r.Endpoints)
	case k < 83:
		again(s, r.Listeners)
	case k < 87:
		again(s, r.Clusters)
	case k < 91:
		again(s, r.Endpoints)
	case k < 93:
		// Many assignments at once, as after a reconnection.
		for range simClusters / 2 {
			name := s.assignmentName()
			r.Endpoints[name] = s.assignment(name)
		}
	case k < 96:
		// The control plane catches up: every missing resource arrives.
		res, _ := translate.Translate(*r)
		for _, m := range res.Missing {
			switch typ, name, _ := strings.Cut(m, "/"); typ {
			case "Cluster":
				r.Clusters[name] = edsCluster(name, "")
			case "RouteConfiguration":
				r.Routes[name] = s.route(name)
			default:
				r.Endpoints[name] = cla(name, lbEndpoint("10.244.3.1", 80))
			}
		}
	case k < 97 && s.refused(1):
		// A resource held under a name other than its own.
		name := s.clusterName()
		r.Endpoints[name] = cla(name+"-other", s.endpoints(0)...)
	case k < 98 && s.refused(1):
		// The same message under a second name.
		if name := pick(s, r.Listeners); name != "" {
			r.Listeners[name+"-again"] = r.Listeners[name]
		}
	case k >= 98:
		// A workload directory comes, changes or goes.
		name := fmt.Sprintf("%s/ns%d", translate.Directory, s.rng.IntN(3))
		if s.rng.IntN(4) == 0 {
			delete(r.Endpoints, name)
			break
		}
		eps := make([]*endpointv3.LbEndpoint, 1+s.rng.IntN(3))
		for i := range eps {
			eps[i] = withWorkload(lbEndpoint(fmt.Sprintf("10.250.%d.%d", s.rng.IntN(2), s.rng.IntN(50)), 0), map[string]any{
				"spiffe_id": fmt.Sprintf("spiffe://td/ns/ns/sa/sa%d", s.rng.IntN(4)),
			})
		}
		r.Endpoints[name] = cla(name, eps...)
	}
}

func (s *sim) clone() translate.Resources { return copyMaps(s.r) }

// TestTranslatorMatchesTranslate changes a mesh at random, a few resources
// at a time, and checks after every change that a Translator fed every set
// in turn gives what Translate gives on that set alone.
func TestTranslatorMatchesTranslate(t *testing.T) {
	seeds, steps := 3, 400
	if testing.Short() {
		steps = 100
	}
	// What the steps gave, over all seeds: the changes must keep
	// exercising every outcome.
	var stats struct{ accepted, refused, validate, missing, complete, ignored, unchanged, peers, l7, routesMissing int }
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			s := &sim{rng: rand.New(rand.NewPCG(seed, 7))}
			s.r = translate.Resources{
				Listeners: map[string]*listenerv3.Listener{},
				Clusters:  map[string]*clusterv3.Cluster{},
				Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
				Routes:    map[string]*routev3.RouteConfiguration{},
			}
			// Valid to start with, some clusters, assignments and route
			// configurations not there yet.
			s.valid = true
			for i := range simRoutes {
				if i%4 != 3 {
					name := fmt.Sprintf("r%d", i)
					s.r.Routes[name] = s.route(name)
				}
			}
			for i := range simListeners {
				if i%5 != 0 {
					l := s.listener(i)
					s.r.Listeners[l.Name] = l
				}
			}
			for range simClusters {
				name := s.clusterName()
				s.r.Clusters[name] = s.cluster(name)
				name = s.assignmentName()
				s.r.Endpoints[name] = s.assignment(name)
			}
			s.valid = false
			if _, err := translate.Translate(s.r); err != nil {
				t.Fatalf("the initial mesh is refused: %v", err)
			}
			tr := translate.NewTranslator()
			hinted := translate.NewTranslator() // told exactly what changed
			var hintedBase translate.Resources  // the set of hinted's last successful call
			// staged accepts only some of its translations and is never
			// given a message again once it accepted it.
			staged, stagedBase := translate.NewTranslator(), translate.Resources{}
			// prepared is staged fed with prepared resources.
			prepared, preparedBase := translate.NewTranslator(), translate.Resources{}
			accepted := s.clone()
			for step := range steps {
				switch n := s.rng.IntN(10); {
				case n == 0: // the same set again
					stats.unchanged++
				default:
					for range n {
						s.change()
					}
				}
				err := sameAsTranslate(t, fmt.Sprint("step ", step), tr, s.r)
				if hintedErr := sameWithHint(t, fmt.Sprint("step ", step, " (hint)"), hinted, hintedBase, s.r); hintedErr == nil {
					hintedBase = s.clone()
				}
				stagedBase = sameStaged(t, fmt.Sprint("step ", step, " (staged)"), staged, stagedBase, s.r, s.rng.IntN(6) != 0, false)
				preparedBase = sameStaged(t, fmt.Sprint("step ", step, " (prepared)"), prepared, preparedBase, s.r, s.rng.IntN(6) != 0, true)
				if step%50 == 0 {
					// Messages only the translators knew are freed: a
					// new message at a freed one's address must still
					// be told apart from it.
					runtime.GC()
				}
				switch {
				case err == nil:
					stats.accepted++
					res, _ := translate.Translate(s.r)
					if len(res.Missing) > 0 {
						stats.missing++
					} else {
						stats.complete++
					}
					if len(res.Ignored) > 0 {
						stats.ignored++
					}
					if len(res.State.Peers) > 0 {
						stats.peers++
					}
					if slices.ContainsFunc(res.State.Services, func(svc model.Service) bool { return svc.L7 != nil }) {
						stats.l7++
					}
					if slices.ContainsFunc(res.Missing, func(m string) bool { return strings.HasPrefix(m, "RouteConfiguration/") }) {
						stats.routesMissing++
					}
					accepted = s.clone()
				case strings.Contains(err.Error(), "duplicate VIP") || strings.Contains(err.Error(), "address family"):
					stats.validate++
					fallthrough
				default:
					stats.refused++
					// A client keeps the accepted set and the control
					// plane fixes or resends; either way the next set
					// may or may not build on the refused one.
					if s.rng.IntN(3) != 0 {
						s.r = accepted
						accepted = s.clone()
					}
				}
				s.r = s.clone()
			}
		})
	}
	t.Logf("%+v", stats)
	if n := seeds * steps / 10; stats.accepted < n || stats.refused < n || stats.validate == 0 || stats.missing == 0 || stats.complete == 0 || stats.ignored == 0 || stats.peers == 0 ||
		stats.l7 == 0 || stats.routesMissing == 0 {
		t.Errorf("the random changes no longer exercise every outcome: %+v", stats)
	}
}

// TestTranslatorAfterRefusal checks that a refused set leaves the
// Translator as it was: the accepted set translates as before, and as
// nothing changed since, to the very same services.
func TestTranslatorAfterRefusal(t *testing.T) {
	good := demo()
	good.Listeners["b"] = tcpListener("b", "10.96.0.2", 80, weighted("web", 1, "canary", 1))
	good.Clusters["canary"] = staticCluster("canary", lbEndpoint("10.244.7.7", 8080))

	tr := translate.NewTranslator()
	first, err := tr.Translate(good)
	if err != nil {
		t.Fatal(err)
	}
	refusals := map[string]func(r *translate.Resources){
		"a refused listener and a changed assignment": func(r *translate.Resources) {
			r.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", 9999))
			r.Listeners["a"] = tcpListener("a", "10.96.0.3", 0, tcpProxy("web"))
		},
		"a refused assignment": func(r *translate.Resources) {
			r.Clusters["canary"] = edsCluster("canary", "")
			r.Endpoints["canary"] = cla("canary", lbEndpoint("10.244.1.5", 1), lbEndpoint("10.244.1.5", 1))
		},
		"a duplicate VIP": func(r *translate.Resources) {
			r.Listeners["c"] = tcpListener("c", "10.96.0.2", 80, tcpProxy("web"))
		},
		"an endpoint of the other family": func(r *translate.Resources) {
			r.Endpoints["web"] = cla("web", lbEndpoint("fd00::1", 80))
		},
		"a listener gone and one refused": func(r *translate.Resources) {
			delete(r.Listeners, "b")
			r.Listeners["z"] = tcpListener("z", "127.0.0.1", 80, tcpProxy("web"))
		},
	}
	for name, change := range refusals {
		t.Run(name, func(t *testing.T) {
			bad := translate.Resources{Listeners: maps.Clone(good.Listeners), Clusters: maps.Clone(good.Clusters), Endpoints: maps.Clone(good.Endpoints)}
			change(&bad)
			if err := sameAsTranslate(t, "refused", tr, bad); err == nil {
				t.Fatal("accepted")
			}
			got, err := tr.Translate(good)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, first) {
				t.Fatalf("after a refusal: %s\nwant %s", dump(got.State.Services), dump(first.State.Services))
			}
			if &got.State.Services[0] != &first.State.Services[0] {
				t.Errorf("the accepted set again gave new services")
			}
		})
	}
}

// TestTranslatorSharesUnchanged checks what lets a consumer skip unchanged
// services cheaply: they keep their slices from one result to the next.
func TestTranslatorSharesUnchanged(t *testing.T) {
	r := translate.Resources{
		Listeners: map[string]*listenerv3.Listener{},
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
	}
	for i := range 50 {
		name := fmt.Sprintf("svc%02d", i)
		tp := tcpProxy(name)
		if i%10 == 0 {
			tp = weighted(name, 1, "svc01", 1)
		}
		r.Listeners[name] = tcpListener(name, fmt.Sprintf("10.96.0.%d", i+1), 80, tp)
		r.Clusters[name] = edsCluster(name, "")
		r.Endpoints[name] = cla(name, lbEndpoint(fmt.Sprintf("10.244.0.%d", i+1), 80), lbEndpoint(fmt.Sprintf("10.244.1.%d", i+1), 80))
	}
	tr := translate.NewTranslator()
	prev := sameResult(t, tr, r)

	// svc07's assignment changes: only svc07 changes.
	r.Endpoints = maps.Clone(r.Endpoints)
	r.Endpoints["svc07"] = cla("svc07", withWeight(lbEndpoint("10.244.0.8", 80), 5), lbEndpoint("10.244.1.8", 80))
	next := sameResult(t, tr, r)
	for i := range next.State.Services {
		a, b := &prev.State.Services[i], &next.State.Services[i]
		shared := sameArray(a.Endpoints, b.Endpoints) && sameArray(a.Splits, b.Splits)
		if want := a.Name != "svc07"; shared != want {
			t.Errorf("%s: shares its slices with the previous result: %v, want %v", a.Name, shared, want)
		}
	}

	// The same assignments again, as new messages: nothing changes.
	r.Endpoints = maps.Clone(r.Endpoints)
	for name, a := range r.Endpoints {
		r.Endpoints[name] = proto.Clone(a).(*endpointv3.ClusterLoadAssignment)
	}
	last := sameResult(t, tr, r)
	if &last.State.Services[0] != &next.State.Services[0] {
		t.Errorf("assignments sent again unchanged gave new services")
	}
	// And svc01, used by weighted listeners too.
	r.Endpoints = maps.Clone(r.Endpoints)
	r.Endpoints["svc01"] = cla("svc01", lbEndpoint("10.244.9.9", 80))
	final := sameResult(t, tr, r)
	for i := range final.State.Services {
		a, b := &last.State.Services[i], &final.State.Services[i]
		shared := sameArray(a.Endpoints, b.Endpoints) && sameArray(a.Splits, b.Splits)
		if want := a.Name != "svc01" && a.Splits == nil; shared != want {
			t.Errorf("%s: shares its slices with the previous result: %v, want %v", a.Name, shared, want)
		}
	}
}

func sameResult(t *testing.T, tr *translate.Translator, r translate.Resources) translate.Result {
	t.Helper()
	if err := sameAsTranslate(t, "", tr, r); err != nil {
		t.Fatal(err)
	}
	res, _ := tr.Translate(r)
	return res
}

func sameArray[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// TestTranslatorEmpty checks the edges: nothing, then everything gone, with
// a zero Translator.
func TestTranslatorEmpty(t *testing.T) {
	tr := &translate.Translator{}
	sameAsTranslate(t, "empty", tr, translate.Resources{})
	sameAsTranslate(t, "demo", tr, demo())
	sameAsTranslate(t, "empty again", tr, translate.Resources{})
	var zero model.State
	if got, _ := tr.Translate(translate.Resources{}); !reflect.DeepEqual(got.State, zero) {
		t.Errorf("State = %+v, want none", got.State)
	}
}

// The Translator writes a new state's services into the array of the
// accepted state before last, and into no array a caller may still use: an
// accepted result stays intact until the first Stage after the next
// accept, whatever is staged in between.
func TestTranslatorReusesServices(t *testing.T) {
	r := demo()
	tr := translate.NewTranslator()
	first, err := tr.Translate(r)
	if err != nil {
		t.Fatal(err)
	}
	kept := slices.Clone(first.State.Services)
	change := func(port uint32) translate.Resources {
		r.Endpoints = maps.Clone(r.Endpoints)
		r.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", port))
		return r
	}
	// Staged and dropped, staged and dropped, staged and accepted: first
	// (the last accepted until the accept) must not change meanwhile.
	for i, port := range []uint32{9001, 9002, 9003} {
		res, accept, err := tr.Stage(change(port), nil)
		if err != nil {
			t.Fatal(err)
		}
		if sameArray(res.State.Services, first.State.Services) {
			t.Fatalf("stage %d: written into the last accepted state's services", i)
		}
		if !reflect.DeepEqual(first.State.Services, kept) {
			t.Fatalf("stage %d: the last accepted state changed:\n%s\nwas %s", i, dump(first.State.Services), dump(kept))
		}
		if i == 2 {
			accept()
		}
	}
	// first is now the accepted state before last: the next change may
	// use its array.
	third, err := tr.Translate(change(9004))
	if err != nil {
		t.Fatal(err)
	}
	if !sameArray(third.State.Services, first.State.Services) {
		t.Errorf("a change allocated new services instead of reusing the array of the state before last")
	}
	if err := sameAsTranslate(t, "after reuse", tr, change(9005)); err != nil {
		t.Fatal(err)
	}
}
