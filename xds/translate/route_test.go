package translate_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	stringmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// routes is a route configuration "web" exercising every honoured field.
func routes() *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name:             "web",
		ValidateClusters: wrapperspb.Bool(true), // ignored
		VirtualHosts: []*routev3.VirtualHost{{
			Name:        "web",
			Domains:     []string{"Web.Shop", "*.shop.svc.cluster.local", "10.96.0.10:80"},
			RetryPolicy: &routev3.RetryPolicy{RetryOn: "connect-failure"},
			Routes: []*routev3.Route{
				{
					Name: "canary",
					Match: &routev3.RouteMatch{
						PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api/"},
						CaseSensitive: wrapperspb.Bool(false),
						Headers: []*routev3.HeaderMatcher{
							{Name: "X-Canary", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &stringmatcherv3.StringMatcher{
								MatchPattern: &stringmatcherv3.StringMatcher_Exact{Exact: "yes"}, IgnoreCase: true}}},
							{Name: "x-debug", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true},
						},
						QueryParameters: []*routev3.QueryParameterMatcher{{Name: "v", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{
							StringMatch: &stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_SafeRegex{SafeRegex: &stringmatcherv3.RegexMatcher{Regex: "[0-9]+"}}}}}},
					},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
							{Name: "web-v1", Weight: wrapperspb.UInt32(90)}, {Name: "web-v2", Weight: wrapperspb.UInt32(10)},
						}}},
						PrefixRewrite: "/",
						Timeout:       durationpb.New(2 * time.Second),
						RetryPolicy:   &routev3.RetryPolicy{RetryOn: "5xx, reset", NumRetries: wrapperspb.UInt32(3), PerTryTimeout: durationpb.New(500 * time.Millisecond)},
						HashPolicy:    []*routev3.RouteAction_HashPolicy{{}}, // ignored
					}},
					RequestHeadersToAdd: []*corev3.HeaderValueOption{
						{Header: &corev3.HeaderValue{Key: "X-Route", Value: "canary"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
						{Header: &corev3.HeaderValue{Key: "x-tag", Value: "a"}},
					},
					RequestHeadersToRemove: []string{"X-Internal"},
				},
				{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/healthz"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "web-v1"}, Timeout: durationpb.New(0)}},
				},
				{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &stringmatcherv3.RegexMatcher{Regex: "/items/[0-9]+"}}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "web-v1"}}},
				},
			},
		}},
	}
}

func TestTranslateRoutes(t *testing.T) {
	got, ignored, err := translate.TranslateRoutes("web", routes())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.VirtualHosts) != 1 {
		t.Fatalf("%d virtual hosts", len(got.VirtualHosts))
	}
	vh := got.VirtualHosts[0]
	if strings.Join(vh.Domains, " ") != "web.shop *.shop.svc.cluster.local 10.96.0.10:80" {
		t.Errorf("domains %q, want them lower-cased in order", vh.Domains)
	}
	if len(vh.Routes) != 3 {
		t.Fatalf("%d routes, want 3", len(vh.Routes))
	}
	canary := vh.Routes[0]
	m, a := canary.Match, canary.Action
	if m.PathKind != model.PathPrefix || m.Path != "/api/" || m.CaseSensitive {
		t.Errorf("canary path match %+v", m)
	}
	if len(m.Headers) != 2 || m.Headers[0].Name != "x-canary" || m.Headers[0].Value.Kind != model.MatchExact || !m.Headers[0].Value.IgnoreCase ||
		!m.Headers[1].Present || !m.Headers[1].Invert {
		t.Errorf("canary header matches %+v", m.Headers)
	}
	if len(m.Query) != 1 || m.Query[0].Value.Kind != model.MatchRegex || !m.Query[0].Value.Match("42") || m.Query[0].Value.Match("42a") {
		t.Errorf("canary query match %+v: want a whole-value regex", m.Query)
	}
	if len(a.Clusters) != 2 || a.Clusters[0] != (model.WeightedCluster{Name: "web-v1", Weight: 90}) || a.Clusters[1] != (model.WeightedCluster{Name: "web-v2", Weight: 10}) {
		t.Errorf("canary clusters %+v", a.Clusters)
	}
	if a.PrefixRewrite != "/" || a.Timeout != 2*time.Second {
		t.Errorf("canary rewrite %q timeout %v", a.PrefixRewrite, a.Timeout)
	}
	if r := a.Retry; r == nil || r.On != model.Retry5xx|model.RetryReset || r.NumRetries != 3 || r.PerTryTimeout != 500*time.Millisecond {
		t.Errorf("canary retry %+v, want its own, not the virtual host's", a.Retry)
	}
	if len(a.AddHeaders) != 2 || a.AddHeaders[0] != (model.HeaderValue{Name: "x-route", Value: "canary"}) || a.AddHeaders[1] != (model.HeaderValue{Name: "x-tag", Value: "a", Append: true}) {
		t.Errorf("canary headers to add %+v", a.AddHeaders)
	}
	if len(a.RemoveHeaders) != 1 || a.RemoveHeaders[0] != "x-internal" {
		t.Errorf("canary headers to remove %q", a.RemoveHeaders)
	}
	health := vh.Routes[1]
	if health.Match.PathKind != model.PathExact || health.Action.Timeout != 0 || len(health.Action.Clusters) != 1 || health.Action.Clusters[0].Weight != 1 {
		t.Errorf("healthz route %+v: want an exact match, no timeout (0 disables it), one cluster", health)
	}
	if r := health.Action.Retry; r == nil || r.On != model.RetryConnectFailure || r.NumRetries != 1 {
		t.Errorf("healthz retry %+v, want the virtual host's (connect-failure, 1 retry by default)", r)
	}
	items := vh.Routes[2]
	if items.Action.Timeout != translate.DefaultRouteTimeout || !items.Match.PathRegex.MatchString("/items/7") || items.Match.PathRegex.MatchString("/items/7/x") {
		t.Errorf("items route: timeout %v, regex %v; want the default timeout and a whole-path regex", items.Action.Timeout, items.Match.PathRegex)
	}
	if ignored["RouteConfiguration.validate_clusters"] != 1 || ignored["Route.route.hash_policy"] != 1 {
		t.Errorf("ignored %v", ignored)
	}
}

func TestTranslateRoutesRefusals(t *testing.T) {
	canary := func(rc *routev3.RouteConfiguration) *routev3.Route { return rc.VirtualHosts[0].Routes[0] }
	action := func(rc *routev3.RouteConfiguration) *routev3.RouteAction { return canary(rc).GetRoute() }
	const r0 = "virtual_hosts[0].routes[0]"
	tests := []struct {
		name          string
		change        func(rc *routev3.RouteConfiguration)
		field, reason string
	}{
		{"name differs", func(rc *routev3.RouteConfiguration) { rc.Name = "other" }, "name", `"other" differs`},
		{"VHDS", func(rc *routev3.RouteConfiguration) { rc.Vhds = &routev3.Vhds{} }, "vhds", "VHDS is not supported"},
		{"config-level headers", func(rc *routev3.RouteConfiguration) { rc.RequestHeadersToRemove = []string{"x"} },
			"request_headers_to_remove", "supported on routes only"},
		{"no domains", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts[0].Domains = nil }, "virtual_hosts[0].domains", "empty"},
		{"bad wildcard", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts[0].Domains[1] = "a.*.b" },
			"virtual_hosts[0].domains[1]", "wildcard may only be the first or the last"},
		{"domain twice", func(rc *routev3.RouteConfiguration) {
			rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{Name: "dup", Domains: []string{"WEB.shop"}})
		}, "virtual_hosts[1].domains[0]", `"web.shop" is also a domain of virtual_hosts[0]`},
		{"CORS", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts[0].Cors = &routev3.CorsPolicy{} }, "virtual_hosts[0].cors", "CORS is not supported"},
		{"redirect", func(rc *routev3.RouteConfiguration) {
			canary(rc).Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{}}
		}, r0 + ".redirect", "redirects are not supported yet"},
		{"no path match", func(rc *routev3.RouteConfiguration) { canary(rc).Match.PathSpecifier = nil }, r0 + ".match", "set prefix, path or safe_regex"},
		{"bad regex", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &stringmatcherv3.RegexMatcher{Regex: "(["}}
		}, r0 + ".match.safe_regex.regex", "not a valid RE2 expression"},
		{"range match", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.Headers[0].HeaderMatchSpecifier = &routev3.HeaderMatcher_RangeMatch{}
		}, r0 + ".match.headers[0].range_match", "range matches are not supported"},
		{"unknown pseudo-header", func(rc *routev3.RouteConfiguration) { canary(rc).Match.Headers[0].Name = ":status" },
			r0 + ".match.headers[0].name", "pseudo-headers a route can match"},
		{"grpc match", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.Grpc = &routev3.RouteMatch_GrpcRouteMatchOptions{}
		},
			r0 + ".match.grpc", "grpc match is not supported"},
		{"cluster header", func(rc *routev3.RouteConfiguration) {
			action(rc).ClusterSpecifier = &routev3.RouteAction_ClusterHeader{ClusterHeader: "x-cluster"}
		}, r0 + ".route.cluster_header", "choosing the cluster by a request header"},
		{"directory cluster", func(rc *routev3.RouteConfiguration) {
			action(rc).ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: translate.Directory}
		}, r0 + ".route.cluster", "is a workload directory"},
		{"weights all zero", func(rc *routev3.RouteConfiguration) {
			for _, c := range action(rc).GetWeightedClusters().Clusters {
				c.Weight = wrapperspb.UInt32(0)
			}
		}, r0 + ".route.weighted_clusters.clusters", "every weight is 0"},
		{"total weight wrong", func(rc *routev3.RouteConfiguration) {
			action(rc).GetWeightedClusters().TotalWeight = wrapperspb.UInt32(50)
		},
			r0 + ".route.weighted_clusters.total_weight", "50, but the weights add up to 100"},
		{"regex rewrite", func(rc *routev3.RouteConfiguration) {
			action(rc).RegexRewrite = &stringmatcherv3.RegexMatchAndSubstitute{}
		},
			r0 + ".route.regex_rewrite", "use prefix_rewrite"},
		{"prefix rewrite of an exact match", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.PathSpecifier = &routev3.RouteMatch_Path{Path: "/api"}
		}, r0 + ".route.prefix_rewrite", "needs a prefix match"},
		{"negative timeout", func(rc *routev3.RouteConfiguration) { action(rc).Timeout = durationpb.New(-time.Second) },
			r0 + ".route.timeout", "is negative"},
		{"retry on 4xx", func(rc *routev3.RouteConfiguration) { action(rc).RetryPolicy.RetryOn = "5xx,retriable-4xx" },
			r0 + ".route.retry_policy.retry_on", `"retriable-4xx" is not supported`},
		{"retriable status codes", func(rc *routev3.RouteConfiguration) { action(rc).RetryPolicy.RetriableStatusCodes = []uint32{409} },
			r0 + ".route.retry_policy.retriable_status_codes", "not supported yet"},
		{"host header change", func(rc *routev3.RouteConfiguration) { canary(rc).RequestHeadersToAdd[1].Header.Key = "Host" },
			r0 + ".request_headers_to_add[1].header.key", `"host" cannot be changed`},
		{"append action", func(rc *routev3.RouteConfiguration) {
			canary(rc).RequestHeadersToAdd[1].AppendAction = corev3.HeaderValueOption_ADD_IF_ABSENT
		}, r0 + ".request_headers_to_add[1].append_action", "ADD_IF_ABSENT is not supported"},
		{"response headers", func(rc *routev3.RouteConfiguration) { canary(rc).ResponseHeadersToRemove = []string{"server"} },
			r0 + ".response_headers_to_remove", "response header changes are not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := routes()
			tt.change(rc)
			_, _, err := translate.TranslateRoutes("web", rc)
			var re *translate.ResourceError
			if !errors.As(err, &re) {
				t.Fatalf("error %v, want a *ResourceError", err)
			}
			if re.Type != "RouteConfiguration" || re.Name != "web" || re.Field != tt.field || !strings.Contains(re.Reason, tt.reason) {
				t.Errorf("refused %s %q field %q: %s\nwant field %q, reason saying %q", re.Type, re.Name, re.Field, re.Reason, tt.field, tt.reason)
			}
		})
	}
}

// TestRouteHostHeaderIsAuthority checks that a route's matcher of the
// header host matches :authority, as in xDS: Go's server takes Host out of
// a request's headers, so "host" would never match.
func TestRouteHostHeaderIsAuthority(t *testing.T) {
	rc := routes()
	m := rc.VirtualHosts[0].Routes[1].Match
	m.Headers = []*routev3.HeaderMatcher{{Name: "Host", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "web.shop"}}}
	got, _, err := translate.TranslateRoutes("web", rc)
	if err != nil {
		t.Fatal(err)
	}
	if h := got.VirtualHosts[0].Routes[1].Match.Headers; len(h) != 1 || h[0].Name != ":authority" {
		t.Errorf("header matches %+v, want one of :authority", h)
	}
}
