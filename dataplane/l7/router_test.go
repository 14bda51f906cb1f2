package l7_test

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

func route(name string, m model.HTTPMatch) model.HTTPRoute {
	return model.HTTPRoute{Name: name, Match: m, Action: model.HTTPAction{Clusters: []model.WeightedCluster{{Name: name, Weight: 1}}}}
}

func prefix(p string) model.HTTPMatch {
	return model.HTTPMatch{PathKind: model.PathPrefix, Path: p, CaseSensitive: true}
}

func TestVirtualHost(t *testing.T) {
	rt := l7.NewRouter(&model.HTTPRoutes{VirtualHosts: []model.VirtualHost{
		{Name: "exact", Domains: []string{"web.shop", "10.96.0.10:80"}},
		{Name: "short-suffix", Domains: []string{"*.shop"}},
		{Name: "long-suffix", Domains: []string{"*.web.shop"}},
		{Name: "prefix", Domains: []string{"web.*"}},
		{Name: "default", Domains: []string{"*"}},
	}})
	for authority, want := range map[string]string{
		"WEB.shop":      "exact",        // case does not matter
		"10.96.0.10:80": "exact",        // with its port
		"10.96.0.10":    "default",      // without: another authority
		"api.web.shop":  "long-suffix",  // the longest suffix wins, whatever the order
		"db.shop":       "short-suffix", //
		".shop":         "default",      // a wildcard stands for one character at least
		"web.other":     "prefix",       // suffixes before prefixes
		"other":         "default",
	} {
		if vh := rt.VirtualHost(authority); vh == nil || vh.Name != want {
			t.Errorf("%q: virtual host %v, want %s", authority, vh, want)
		}
	}
	if vh := l7.NewRouter(&model.HTTPRoutes{VirtualHosts: []model.VirtualHost{{Domains: []string{"a"}}}}).VirtualHost("b"); vh != nil {
		t.Errorf("no default host: got %s", vh.Name)
	}
	portless := l7.NewRouter(&model.HTTPRoutes{IgnorePort: true, VirtualHosts: []model.VirtualHost{{Name: "web", Domains: []string{"web.shop"}}}})
	if vh := portless.VirtualHost("web.shop:8080"); vh == nil {
		t.Error("IgnorePort: web.shop:8080 did not match web.shop")
	}
}

func TestRoute(t *testing.T) {
	insensitive := prefix("/API/")
	insensitive.CaseSensitive = false
	header := prefix("/")
	header.Headers = []model.HeaderMatch{
		{Name: "x-canary", Value: model.StringMatch{Kind: model.MatchExact, Value: "yes"}},
		{Name: "x-debug", Present: true, Invert: true},
		{Name: ":method", Value: model.StringMatch{Kind: model.MatchExact, Value: "POST"}},
	}
	query := prefix("/")
	query.Query = []model.QueryMatch{{Name: "v", Value: model.StringMatch{Kind: model.MatchRegex, Regex: regexp.MustCompile(`^(?:[0-9]+)$`)}}, {Name: "debug", Present: true}}
	rt := l7.NewRouter(&model.HTTPRoutes{VirtualHosts: []model.VirtualHost{{Domains: []string{"*"}, Routes: []model.HTTPRoute{
		route("exact", model.HTTPMatch{PathKind: model.PathExact, Path: "/healthz", CaseSensitive: true}),
		route("regex", model.HTTPMatch{PathKind: model.PathRegex, PathRegex: regexp.MustCompile(`^(?:/items/[0-9]+)$`)}),
		route("api", insensitive),
		route("header", header),
		route("query", query),
		route("escaped", prefix("/a%2Fb")),
		route("rest", prefix("/")),
	}}}})
	tests := []struct {
		method, url string
		headers     map[string]string
		want        string
	}{
		{"GET", "/healthz", nil, "exact"},
		{"GET", "/healthz/x", nil, "rest"},    // exact is exact
		{"GET", "/healthz?x=1", nil, "exact"}, // the query is not part of the path
		{"GET", "/items/42", nil, "regex"},    //
		{"GET", "/items/42/x", nil, "rest"},   // the regex matches the whole path
		{"GET", "/api/users", nil, "api"},     // case-insensitive prefix
		{"GET", "/Api/users", nil, "api"},     //
		{"POST", "/x", map[string]string{"X-Canary": "yes"}, "header"},
		{"GET", "/x", map[string]string{"X-Canary": "yes"}, "rest"}, // :method differs
		{"POST", "/x", map[string]string{"X-Canary": "yes", "X-Debug": "1"}, "rest"},
		{"POST", "/x", map[string]string{"X-Canary": "no"}, "rest"},
		{"GET", "/x?v=12&debug", nil, "query"},
		{"GET", "/x?v=12a&debug", nil, "rest"},
		{"GET", "/x?v=12", nil, "rest"}, // debug missing
		{"GET", "/a%2Fb/c", nil, "escaped"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, "http://web"+tt.url, nil)
		for k, v := range tt.headers {
			r.Header.Set(k, v)
		}
		got := rt.Route(r)
		if got == nil || got.Name != tt.want {
			t.Errorf("%s %s %v: route %v, want %s", tt.method, tt.url, tt.headers, got, tt.want)
		}
	}
}

func TestPick(t *testing.T) {
	cs := []model.WeightedCluster{{Name: "a", Weight: 3}, {Name: "zero", Weight: 0}, {Name: "b", Weight: 1}}
	got := map[string]int{}
	for n := range uint64(400) {
		got[l7.Pick(cs, n)]++
	}
	if got["a"] != 300 || got["b"] != 100 || got["zero"] != 0 {
		t.Errorf("400 consecutive numbers went %v, want a:300 b:100", got)
	}
}

func TestRewriteAndHeaders(t *testing.T) {
	r := model.HTTPRoute{Match: prefix("/api/"), Action: model.HTTPAction{PrefixRewrite: "/v2/",
		RemoveHeaders: []string{"x-internal"},
		AddHeaders:    []model.HeaderValue{{Name: "x-route", Value: "api"}, {Name: "x-tag", Value: "b", Append: true}},
	}}
	if got := l7.Rewrite(&r, "/api/users"); got != "/v2/users" {
		t.Errorf("rewrite %q", got)
	}
	exact := r
	exact.Match = model.HTTPMatch{PathKind: model.PathExact, Path: "/api/users"}
	if got := l7.Rewrite(&exact, "/api/users"); got != "/api/users" {
		t.Errorf("rewrite of an exact route %q, want the path as is", got)
	}
	h := http.Header{"X-Internal": {"secret"}, "X-Route": {"old"}, "X-Tag": {"a"}}
	l7.EditHeaders(&r.Action, h)
	if h.Get("X-Internal") != "" || h.Values("X-Route")[0] != "api" || len(h.Values("X-Route")) != 1 || len(h.Values("X-Tag")) != 2 {
		t.Errorf("headers %v", h)
	}
}
