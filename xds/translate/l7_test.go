package translate_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// l7Mesh is demo() with its listener made an L7 service on the same
// address that reads the routes "web-routes" (RDS): /api goes to the
// clusters "api" (STATIC, one endpoint) and "web" by weight, the rest to
// "web".
func l7Mesh() translate.Resources {
	r := demo()
	r.Listeners[lname] = httpListener(lname, "10.96.0.10", 80, rdsHCM("web-routes"))
	r.Clusters["api"] = staticCluster("api", lbEndpoint("10.244.3.1", 9090))
	r.Routes = map[string]*routev3.RouteConfiguration{"web-routes": webRoutes("web-routes")}
	return r
}

func webRoutes(name string) *routev3.RouteConfiguration {
	return routeConfig(name, prefixRoute("/api", "api", 1, "web", 3), prefixRoute("/", "web"))
}

// translatedRoutes is what TranslateRoutes makes of rc under name.
func translatedRoutes(t *testing.T, name string, rc *routev3.RouteConfiguration) *model.HTTPRoutes {
	t.Helper()
	routes, _, err := translate.TranslateRoutes(name, rc)
	if err != nil {
		t.Fatal(err)
	}
	return routes
}

// l7Service is the service of l7Mesh() with routes and clusters.
func l7Service(rds string, routes *model.HTTPRoutes, clusters ...model.Cluster) model.Service {
	return model.Service{
		Name: lname, VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
		L7: &model.L7{RouteConfig: rds, Routes: routes, Clusters: clusters},
	}
}

var (
	apiCluster = model.Cluster{Name: "api", Endpoints: []model.Endpoint{ep("10.244.3.1", 9090)}}
	webCluster = model.Cluster{Name: "web", Endpoints: demoService().Endpoints}
)

func TestTranslateL7(t *testing.T) {
	// The L4 policies a network RBAC filter before the HCM gives: those
	// it gives before a tcp_proxy.
	l4 := demo()
	setRBAC(allowOnly(anyone()))(&l4)
	l4Res, err := translate.Translate(l4)
	if err != nil {
		t.Fatal(err)
	}
	l4Policies := l4Res.State.Services[0].Policies

	tests := []struct {
		name    string
		res     func() translate.Resources
		want    func(t *testing.T, r translate.Resources) []model.Service
		missing []string
		ignored map[string]int // the keys to find, with their counts
	}{
		{
			name: "RDS",
			res:  l7Mesh,
			want: func(t *testing.T, r translate.Resources) []model.Service {
				return []model.Service{l7Service("web-routes", translatedRoutes(t, "web-routes", r.Routes["web-routes"]), apiCluster, webCluster)}
			},
			ignored: map[string]int{"HttpConnectionManager.stat_prefix": 1},
		},
		{
			name: "inline routes",
			res: func() translate.Resources {
				r := l7Mesh()
				r.Listeners[lname] = httpListener(lname, "10.96.0.10", 80, inlineHCM(webRoutes("inline")))
				r.Routes = nil
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				return []model.Service{l7Service("", translatedRoutes(t, "inline", webRoutes("inline")), apiCluster, webCluster)}
			},
		},
		{
			name: "inline routes without a name",
			res: func() translate.Resources {
				r := l7Mesh()
				r.Listeners[lname] = httpListener(lname, "10.96.0.10", 80, inlineHCM(webRoutes("")))
				r.Routes = nil
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				routes := translatedRoutes(t, "x", webRoutes("x"))
				routes.Name = ""
				return []model.Service{l7Service("", routes, apiCluster, webCluster)}
			},
		},
		{
			name: "route configuration missing",
			res: func() translate.Resources {
				r := l7Mesh()
				r.Routes = nil
				return r
			},
			// No virtual host: no request has a route until it comes.
			want: func(t *testing.T, r translate.Resources) []model.Service {
				return []model.Service{l7Service("web-routes", &model.HTTPRoutes{Name: "web-routes"})}
			},
			missing: []string{"RouteConfiguration/web-routes"},
		},
		{
			name: "clusters named by routes missing",
			res: func() translate.Resources {
				r := l7Mesh()
				delete(r.Clusters, "api")
				delete(r.Endpoints, "web")
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				return []model.Service{l7Service("web-routes", translatedRoutes(t, "web-routes", r.Routes["web-routes"]),
					model.Cluster{Name: "api"}, model.Cluster{Name: "web"})}
			},
			missing: []string{"Cluster/api", "ClusterLoadAssignment/web"},
		},
		{
			name: "routes that no listener reads",
			res: func() translate.Resources {
				r := demo()
				r.Routes = map[string]*routev3.RouteConfiguration{"spare": webRoutes("spare")}
				r.Routes["spare"].ValidateClusters = wrapperspb.Bool(true)
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				return []model.Service{demoService()}
			},
			ignored: map[string]int{"RouteConfiguration.validate_clusters": 1},
		},
		{
			name: "network RBAC before the HCM: L4 policies",
			res: func() translate.Resources {
				r := l7Mesh()
				fc := listener(r).FilterChains[0]
				fc.Filters = append([]*listenerv3.Filter{rbacFilter("envoy.filters.network.rbac", allowOnly(anyone()))}, fc.Filters...)
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				svc := l7Service("web-routes", translatedRoutes(t, "web-routes", r.Routes["web-routes"]), apiCluster, webCluster)
				svc.Policies = l4Policies
				return []model.Service{svc}
			},
		},
		{
			name: "dual stack",
			res: func() translate.Resources {
				r := l7Mesh()
				listener(r).AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("fd00:96::10", 80)}}
				r.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", 8080), lbEndpoint("fd00:244::5", 8080), lbEndpoint("10.244.2.7", 8080))
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				routes := translatedRoutes(t, "web-routes", r.Routes["web-routes"])
				v4 := l7Service("web-routes", routes, apiCluster, webCluster)
				v6 := l7Service("web-routes", routes, model.Cluster{Name: "api"},
					model.Cluster{Name: "web", Endpoints: []model.Endpoint{ep("fd00:244::5", 8080)}})
				v6.VIP = ip("fd00:96::10")
				return []model.Service{v4, v6}
			},
		},
		{
			name: "two listeners read one route configuration",
			res: func() translate.Resources {
				r := l7Mesh()
				r.Listeners["b"] = httpListener("b", "10.96.0.11", 8080, rdsHCM("web-routes"))
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				routes := translatedRoutes(t, "web-routes", r.Routes["web-routes"])
				b := l7Service("web-routes", routes, apiCluster, webCluster)
				b.Name, b.VIP, b.Port = "b", ip("10.96.0.11"), 8080
				return []model.Service{b, l7Service("web-routes", routes, apiCluster, webCluster)}
			},
		},
		{
			name: "fast path setting",
			res: func() translate.Resources {
				r := l7Mesh()
				withService(listener(r), map[string]any{"fast_path": false})
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				svc := l7Service("web-routes", translatedRoutes(t, "web-routes", r.Routes["web-routes"]), apiCluster, webCluster)
				svc.FastPath = model.FastPathOff
				return []model.Service{svc}
			},
		},
		{
			name: "harmless settings are counted",
			res: func() translate.Resources {
				r := l7Mesh()
				l := listener(r)
				h := hcmOf(l)
				h.CodecType = hcmv3.HttpConnectionManager_HTTP1
				h.Tracing = &hcmv3.HttpConnectionManager_Tracing{}
				h.UseRemoteAddress = wrapperspb.Bool(true)
				h.StreamIdleTimeout = durationpb.New(time.Minute)
				h.NormalizePath = wrapperspb.Bool(false)
				h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_KEEP_UNCHANGED
				h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(time.Hour)}
				h.HttpFilters = []*hcmv3.HttpFilter{
					{Name: "optional", IsOptional: true, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&structpb.Struct{})}},
					httpFilter("router", &routerv3.Router{SuppressEnvoyHeaders: true}),
				}
				setHCM(l, h)
				return r
			},
			want: func(t *testing.T, r translate.Resources) []model.Service {
				return []model.Service{l7Service("web-routes", translatedRoutes(t, "web-routes", r.Routes["web-routes"]), apiCluster, webCluster)}
			},
			ignored: map[string]int{
				"HttpConnectionManager.codec_type=HTTP1":                          1,
				"HttpConnectionManager.tracing":                                   1,
				"HttpConnectionManager.use_remote_address":                        1,
				"HttpConnectionManager.stream_idle_timeout":                       1,
				"HttpConnectionManager.common_http_protocol_options.idle_timeout": 1,
				"HttpConnectionManager.http_filters.is_optional":                  1,
				"Router.suppress_envoy_headers":                                   1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.res()
			before := cloneResources(r)
			got, err := translate.Translate(r)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if want := tt.want(t, r); !reflect.DeepEqual(got.State.Services, want) {
				t.Errorf("services:\n got %s\nwant %s", dump(got.State.Services), dump(want))
			}
			if !reflect.DeepEqual(got.Missing, tt.missing) {
				t.Errorf("Missing = %q, want %q", got.Missing, tt.missing)
			}
			for k, n := range tt.ignored {
				if got.Ignored[k] != n {
					t.Errorf("Ignored[%q] = %d, want %d (Ignored %v)", k, got.Ignored[k], n, got.Ignored)
				}
			}
			if err := got.State.Validate(); err != nil {
				t.Errorf("State.Validate: %v", err)
			}
			if !equalResources(r, before) {
				t.Errorf("Translate modified its input")
			}
			checkServicesOwnEndpoints(t, got.State.Services)
			checkTranslator(t, r)
		})
	}
}

// checkServicesOwnEndpoints fails if two services, or two clusters of L7
// services, share an endpoint array: a consumer may reorder each in place.
func checkServicesOwnEndpoints(t *testing.T, services []model.Service) {
	t.Helper()
	owner := map[*model.Endpoint]string{}
	own := func(eps []model.Endpoint, who string) {
		if len(eps) == 0 {
			return
		}
		if prev, ok := owner[&eps[0]]; ok {
			t.Errorf("%s shares its endpoints with %s", who, prev)
		}
		owner[&eps[0]] = who
	}
	for _, s := range services {
		for _, p := range s.Pools() {
			own(p.Endpoints, s.Name+" "+s.Key().String()+" pool "+p.Name)
		}
		if s.L7 != nil {
			for _, c := range s.L7.Clusters {
				own(c.Endpoints, s.Name+" "+s.Key().String()+" cluster "+c.Name)
			}
		}
	}
}

// TestHCMHTTPRBAC checks where an HTTP RBAC filter's translation goes: an
// HTTP policy of the service, never an L4 one. (Its translation is
// httprbac.go's to test.)
func TestHCMHTTPRBAC(t *testing.T) {
	r := l7Mesh()
	l := listener(r)
	h := hcmOf(l)
	authz := &rbachttpv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: map[string]*rbacconfigv3.Policy{"x": anyone()}}}
	h.HttpFilters = append([]*hcmv3.HttpFilter{httpFilter("envoy.filters.http.rbac", authz)}, h.HttpFilters...)
	setHCM(l, h)
	got, err := translate.Translate(r)
	checkTranslator(t, r)
	if err != nil {
		t.Fatalf("an HCM with an HTTP RBAC filter: %v", err)
	}
	svc := got.State.Services[0]
	if len(svc.L7.Policies) != 1 || len(svc.Policies) != 0 {
		t.Errorf("%d HTTP policies and %d L4 policies, want 1 and none", len(svc.L7.Policies), len(svc.Policies))
	}
}

// TestTranslatorFollowsRoutes changes, one at a time, what an L7 service
// depends on, and checks after each change that Translators (told of every
// resource, told the changes, and given the changes prepared) give what
// Translate gives.
func TestTranslatorFollowsRoutes(t *testing.T) {
	r := l7Mesh()
	r.Listeners["tcp"] = tcpListener("tcp", "10.96.0.20", 80, tcpProxy("web"))
	steps := []struct {
		name   string
		change func(r *translate.Resources)
	}{
		{"routes name one cluster", func(r *translate.Resources) {
			r.Routes["web-routes"] = routeConfig("web-routes", prefixRoute("/", "web"))
		}},
		{"routes name another", func(r *translate.Resources) {
			r.Routes["web-routes"] = routeConfig("web-routes", prefixRoute("/", "api"))
		}},
		{"its cluster becomes EDS, its assignment missing", func(r *translate.Resources) {
			r.Clusters["api"] = edsCluster("api", "")
		}},
		{"the assignment arrives", func(r *translate.Resources) {
			r.Endpoints["api"] = cla("api", lbEndpoint("10.244.4.4", 80))
		}},
		{"the cluster the routes named before changes", func(r *translate.Resources) {
			r.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", 8081))
		}},
		{"routes and cluster change together", func(r *translate.Resources) {
			r.Routes["web-routes"] = routeConfig("web-routes", prefixRoute("/", "new"))
			r.Clusters["new"] = staticCluster("new", lbEndpoint("10.244.5.5", 80))
		}},
		{"the cluster the routes name now changes alone", func(r *translate.Resources) {
			r.Clusters["new"] = staticCluster("new", lbEndpoint("10.244.5.6", 80))
		}},
		{"its upstream protocol changes alone", func(r *translate.Resources) {
			c := staticCluster("new", lbEndpoint("10.244.5.6", 80))
			withHTTPOptions(c, explicitHTTP2(nil))
			r.Clusters["new"] = c
		}},
		{"by a deprecated field", func(r *translate.Resources) {
			c := staticCluster("new", lbEndpoint("10.244.5.6", 80))
			c.ProtocolSelection = clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL
			r.Clusters["new"] = c
		}},
		{"refused upstream protocol", func(r *translate.Resources) {
			c := staticCluster("new", lbEndpoint("10.244.5.6", 80))
			withHTTPOptions(c, &httpupstreamv3.HttpProtocolOptions{})
			r.Clusters["new"] = c
		}},
		{"routes sent again unchanged", func(r *translate.Resources) {
			r.Routes["web-routes"] = routeConfig("web-routes", prefixRoute("/", "new"))
		}},
		{"routes go", func(r *translate.Resources) { delete(r.Routes, "web-routes") }},
		{"routes come back", func(r *translate.Resources) { r.Routes["web-routes"] = webRoutes("web-routes") }},
		{"listener reads other routes", func(r *translate.Resources) {
			r.Listeners[lname] = httpListener(lname, "10.96.0.10", 80, rdsHCM("other"))
		}},
		{"other routes arrive", func(r *translate.Resources) {
			r.Routes["other"] = routeConfig("other", prefixRoute("/", "tcp-only"))
			r.Clusters["tcp-only"] = staticCluster("tcp-only")
		}},
		{"refused routes", func(r *translate.Resources) {
			r.Routes["other"] = routeConfig("other", prefixRoute("/", translate.Directory))
		}},
		{"refused routes go", func(r *translate.Resources) { delete(r.Routes, "other") }},
		{"old routes go too", func(r *translate.Resources) { delete(r.Routes, "web-routes") }},
		{"listener becomes L4", func(r *translate.Resources) {
			r.Listeners[lname] = tcpListener(lname, "10.96.0.10", 80, tcpProxy("api"))
		}},
		{"its cluster changes", func(r *translate.Resources) {
			r.Endpoints["api"] = cla("api", lbEndpoint("10.244.4.5", 80))
		}},
		{"listener becomes L7 with inline routes", func(r *translate.Resources) {
			r.Listeners[lname] = httpListener(lname, "10.96.0.10", 80, inlineHCM(webRoutes("")))
		}},
		{"a cluster its inline routes name changes", func(r *translate.Resources) {
			r.Clusters["api"] = staticCluster("api", lbEndpoint("10.244.6.6", 80))
		}},
		{"listener goes", func(r *translate.Resources) { delete(r.Listeners, lname) }},
	}
	tr, hinted, prepared := translate.NewTranslator(), translate.NewTranslator(), translate.NewTranslator()
	if err := sameAsTranslate(t, "start", tr, r); err != nil {
		t.Fatal(err)
	}
	sameWithHint(t, "start (hint)", hinted, translate.Resources{}, r)
	preparedBase := sameStaged(t, "start (prepared)", prepared, translate.Resources{}, r, true, true)
	hintedBase := copyMaps(r)
	for _, step := range steps {
		next := copyMaps(r)
		step.change(&next)
		err := sameAsTranslate(t, step.name, tr, next)
		if hintErr := sameWithHint(t, step.name+" (hint)", hinted, hintedBase, next); hintErr == nil {
			hintedBase = copyMaps(next)
		}
		preparedBase = sameStaged(t, step.name+" (prepared)", prepared, preparedBase, next, true, true)
		if err == nil {
			r = next
		} else if !strings.Contains(step.name, "refused") {
			t.Fatalf("%s: %v", step.name, err)
		}
	}
}

// TestNamesL7 checks the RDS names a Translator follows as L7 listeners
// come, change and go.
func TestNamesL7(t *testing.T) {
	tr := translate.NewTranslator()
	r := l7Mesh()
	r.Listeners["b"] = httpListener("b", "10.96.0.11", 80, rdsHCM("b-routes"))
	r.Listeners["c"] = httpListener("c", "10.96.0.12", 80, rdsHCM("web-routes"))
	r.Listeners["d"] = httpListener("d", "10.96.0.13", 80, inlineHCM(webRoutes("inline")))
	sameAsTranslate(t, "three RDS listeners", tr, r)
	if got, want := tr.RDSNames(), []string{"b-routes", "web-routes"}; !reflect.DeepEqual(got, want) {
		t.Errorf("RDSNames = %q, want %q", got, want)
	}
	r = copyMaps(r)
	delete(r.Listeners, lname)
	r.Listeners["b"] = httpListener("b", "10.96.0.11", 80, rdsHCM("web-routes"))
	sameAsTranslate(t, "one gone, one changed", tr, r)
	if got, want := tr.RDSNames(), []string{"web-routes"}; !reflect.DeepEqual(got, want) {
		t.Errorf("RDSNames = %q, want %q", got, want)
	}
}

// The L7 part of the randomized Translator test (sim): HTTP connection
// managers and route configurations.

const simRoutes = 12 // route configuration names

func (s *sim) routeName() string { return fmt.Sprintf("r%d", s.rng.IntN(simRoutes)) }

// httpListener is an L7 listener reading a route configuration (RDS) or
// carrying one, sometimes dual-stack, sometimes refused.
func (s *sim) httpListener(i int, name string) *listenerv3.Listener {
	var h *hcmv3.HttpConnectionManager
	if s.rng.IntN(4) == 0 {
		h = inlineHCM(s.route(""))
	} else {
		h = rdsHCM(s.routeName())
	}
	switch {
	case s.refused(30):
		h.HttpFilters = nil // no router
	case s.refused(30):
		h.NormalizePath = wrapperspb.Bool(true)
	case s.rng.IntN(4) == 0:
		h.CodecType = hcmv3.HttpConnectionManager_HTTP2 // counted
	}
	l := httpListener(name, s.vip(i), 80, h)
	if s.rng.IntN(5) == 0 {
		l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr(fmt.Sprintf("fd00:96::%x", i+1), 80)}}
	}
	return l
}

// route is a route configuration whose routes name a few clusters, alone
// or by weight, sometimes one that never exists; sometimes refused.
func (s *sim) route(name string) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: name}
	for v := range 1 + s.rng.IntN(2) {
		vh := &routev3.VirtualHost{Name: fmt.Sprint("vh", v), Domains: []string{fmt.Sprintf("svc%d.example", v)}}
		if v == 0 {
			vh.Domains = []string{"*"}
		}
		for k := range 1 + s.rng.IntN(3) {
			prefix := fmt.Sprintf("/p%d", k)
			switch a, b := s.clusterName(), s.clusterName(); {
			case s.refused(40):
				vh.Routes = append(vh.Routes, prefixRoute(prefix, translate.Directory))
			case a != b && s.rng.IntN(3) == 0:
				vh.Routes = append(vh.Routes, prefixRoute(prefix, a, 1+s.rng.IntN(5), b, s.rng.IntN(3)))
			case s.rng.IntN(20) == 0:
				vh.Routes = append(vh.Routes, prefixRoute(prefix, a+"x")) // never exists
			default:
				vh.Routes = append(vh.Routes, prefixRoute(prefix, a))
			}
		}
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	if s.rng.IntN(4) == 0 {
		rc.ValidateClusters = wrapperspb.Bool(true) // ignored
	}
	return rc
}

// changeRoutes makes one random change to the route configurations.
func (s *sim) changeRoutes() {
	r := &s.r
	switch k := s.rng.IntN(10); {
	case k < 6:
		name := s.routeName()
		r.Routes[name] = s.route(name)
	case k < 8:
		drop(s, r.Routes)
	default:
		again(s, r.Routes)
	}
}
