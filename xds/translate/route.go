package translate

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	stringmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// DefaultRouteTimeout is a route's timeout when it sets none, as in xDS.
const DefaultRouteTimeout = 15 * time.Second

// TranslateRoutes checks and translates a RouteConfiguration sent under
// name: the routing of the L7 services whose listeners refer to it
// (docs/l7.md). The error, if any, is a *ResourceError naming the field;
// ignored fields are counted as Translate counts them.
func TranslateRoutes(name string, rc *routev3.RouteConfiguration) (*model.HTTPRoutes, map[string]int, error) {
	t := newTally()
	r, err := t.routeConfig(name, rc)
	if err != nil {
		return nil, nil, err.resource("RouteConfiguration", name)
	}
	t.done()
	return r, t.counts, nil
}

const (
	reasonRouteLevel = "header changes are supported on routes only (request_headers_to_add/remove of a route)"
	reasonResponse   = "response header changes are not supported"
	reasonPerFilter  = "per-route filter configuration is not supported"
	reasonMirror     = "request mirroring is not supported"
	reasonRateLimit  = "rate limiting is not supported"
	reasonCORS       = "CORS is not supported"
	reasonHostRW     = "host rewriting is not supported"
	reasonHedge      = "request hedging is not supported"
	reasonPlugin     = "cluster specifier plugins are not supported; use cluster or weighted_clusters"
	reasonClusterHdr = "choosing the cluster by a request header is not supported; use cluster or weighted_clusters"
)

// The rules of the matchers that routes and HTTP RBAC rules share; each
// place has its own policies (routeMatchers, httpRBACMatchers), so that
// ignored fields are counted where they were set.
var (
	headerMatcherRules = map[protoreflect.Name]rule{
		"name":                          honour,
		"exact_match":                   honour,
		"safe_regex_match":              honour,
		"present_match":                 honour,
		"prefix_match":                  honour,
		"suffix_match":                  honour,
		"contains_match":                honour,
		"string_match":                  honour,
		"invert_match":                  honour,
		"range_match":                   refuse("range matches are not supported"),
		"treat_missing_header_as_empty": refuse("treat_missing_header_as_empty is not supported"),
	}
	stringMatcherRules = map[protoreflect.Name]rule{
		"exact":       honour,
		"prefix":      honour,
		"suffix":      honour,
		"contains":    honour,
		"safe_regex":  honour,
		"ignore_case": honour,
		"custom":      refuse("custom string matchers are not supported"),
	}
	regexMatcherRules = map[protoreflect.Name]rule{
		"regex":      honour,
		"google_re2": ignore,
	}
)

var (
	routeConfigPolicy = newPolicy("RouteConfiguration", &routev3.RouteConfiguration{}, map[protoreflect.Name]rule{
		"name":                                    honour,
		"virtual_hosts":                           honour,
		"ignore_port_in_host_matching":            honour,
		"vhds":                                    refuse("VHDS is not supported; send the virtual hosts in the route configuration"),
		"internal_only_headers":                   refuse("internal-only headers are not supported"),
		"response_headers_to_add":                 refuse(reasonResponse),
		"response_headers_to_remove":              refuse(reasonResponse),
		"request_headers_to_add":                  refuse(reasonRouteLevel),
		"request_headers_to_remove":               refuse(reasonRouteLevel),
		"most_specific_header_mutations_wins":     ignore,
		"validate_clusters":                       ignore,
		"max_direct_response_body_size_bytes":     ignore,
		"cluster_specifier_plugins":               refuse(reasonPlugin),
		"request_mirror_policies":                 refuse(reasonMirror),
		"vhost_header":                            refuse("choosing the virtual host by another header than :authority is not supported"),
		"ignore_path_parameters_in_path_matching": refuse("ignoring path parameters is not supported"),
		"typed_per_filter_config":                 refuse(reasonPerFilter),
		"metadata":                                ignore,
	})
	virtualHostPolicy = newPolicy("VirtualHost", &routev3.VirtualHost{}, map[protoreflect.Name]rule{
		"name":                              honour,
		"domains":                           honour,
		"routes":                            honour,
		"retry_policy":                      honour,
		"matcher":                           refuse("the generic matcher API is not supported; use routes"),
		"require_tls":                       refuse(reasonTLSTerm),
		"virtual_clusters":                  ignore,
		"rate_limits":                       refuse(reasonRateLimit),
		"request_headers_to_add":            refuse(reasonRouteLevel),
		"request_headers_to_remove":         refuse(reasonRouteLevel),
		"response_headers_to_add":           refuse(reasonResponse),
		"response_headers_to_remove":        refuse(reasonResponse),
		"cors":                              refuse(reasonCORS),
		"typed_per_filter_config":           refuse(reasonPerFilter),
		"include_request_attempt_count":     ignore,
		"include_attempt_count_in_response": ignore,
		"retry_policy_typed_config":         refuse("retry policy extensions are not supported; use retry_policy"),
		"hedge_policy":                      refuse(reasonHedge),
		"include_is_timeout_retry_header":   ignore,
		"per_request_buffer_limit_bytes":    ignore,
		"request_body_buffer_limit":         ignore,
		"request_mirror_policies":           refuse(reasonMirror),
		"metadata":                          ignore,
	})
	routePolicy = newPolicy("Route", &routev3.Route{}, map[protoreflect.Name]rule{
		"name":                           honour,
		"match":                          honour,
		"route":                          honour,
		"request_headers_to_add":         honour,
		"request_headers_to_remove":      honour,
		"redirect":                       refuse("redirects are not supported yet"),
		"direct_response":                refuse("direct responses are not supported yet"),
		"filter_action":                  refuse("filter actions are not supported"),
		"non_forwarding_action":          refuse("non-forwarding actions are not supported"),
		"metadata":                       ignore,
		"decorator":                      ignore,
		"typed_per_filter_config":        refuse(reasonPerFilter),
		"response_headers_to_add":        refuse(reasonResponse),
		"response_headers_to_remove":     refuse(reasonResponse),
		"tracing":                        ignore,
		"per_request_buffer_limit_bytes": ignore,
		"stat_prefix":                    ignore,
		"request_body_buffer_limit":      ignore,
	})
	routeMatchPolicy = newPolicy("Route.match", &routev3.RouteMatch{}, map[protoreflect.Name]rule{
		"prefix":                honour,
		"path":                  honour,
		"safe_regex":            honour,
		"case_sensitive":        honour,
		"headers":               honour,
		"query_parameters":      honour,
		"connect_matcher":       refuse("CONNECT requests are not supported"),
		"path_separated_prefix": refuse("path_separated_prefix is not supported; use prefix"),
		"path_match_policy":     refuse("path match extensions are not supported; use prefix, path or safe_regex"),
		"runtime_fraction":      refuse("runtime fractions are not supported"),
		"cookies":               refuse("cookie matching is not supported"),
		"grpc":                  refuse("the grpc match is not supported; match the content-type header instead"),
		"tls_context":           refuse(reasonTLSTerm),
		"dynamic_metadata":      refuse("dynamic metadata matching is not supported"),
		"filter_state":          refuse("filter state matching is not supported"),
	})
	headerMatcherPolicy = newPolicy("Route.match.headers", &routev3.HeaderMatcher{}, headerMatcherRules)

	queryMatcherPolicy = newPolicy("Route.match.query_parameters", &routev3.QueryParameterMatcher{}, map[protoreflect.Name]rule{
		"name":          honour,
		"string_match":  honour,
		"present_match": honour,
	})
	routeStringMatcherPolicy = newPolicy("Route.match.string_match", &stringmatcherv3.StringMatcher{}, stringMatcherRules)
	regexMatcherPolicy       = newPolicy("Route.match.safe_regex", &stringmatcherv3.RegexMatcher{}, regexMatcherRules)

	// routeMatchers are the policies of a route's header and query matchers.
	routeMatchers = &matchers{what: "a route", header: headerMatcherPolicy, str: routeStringMatcherPolicy, regex: regexMatcherPolicy}

	routeActionPolicy = newPolicy("Route.route", &routev3.RouteAction{}, map[protoreflect.Name]rule{
		"cluster":                         honour,
		"weighted_clusters":               honour,
		"prefix_rewrite":                  honour,
		"timeout":                         honour,
		"retry_policy":                    honour,
		"cluster_header":                  refuse(reasonClusterHdr),
		"cluster_specifier_plugin":        refuse(reasonPlugin),
		"inline_cluster_specifier_plugin": refuse(reasonPlugin),
		"cluster_not_found_response_code": ignore,
		"metadata_match":                  refuse("endpoint subsets are not supported"),
		"regex_rewrite":                   refuse("regex_rewrite is not supported; use prefix_rewrite"),
		"path_rewrite_policy":             refuse("path rewrite extensions are not supported; use prefix_rewrite"),
		"path_rewrite":                    refuse("path_rewrite is not supported; use prefix_rewrite"),
		"host_rewrite_literal":            refuse(reasonHostRW),
		"auto_host_rewrite":               refuse(reasonHostRW),
		"host_rewrite_header":             refuse(reasonHostRW),
		"host_rewrite_path_regex":         refuse(reasonHostRW),
		"host_rewrite":                    refuse(reasonHostRW),
		"append_x_forwarded_host":         ignore,
		"idle_timeout":                    ignore,
		"flush_timeout":                   ignore,
		"early_data_policy":               ignore,
		"retry_policy_typed_config":       refuse("retry policy extensions are not supported; use retry_policy"),
		"request_mirror_policies":         refuse(reasonMirror),
		"priority":                        ignore,
		"rate_limits":                     refuse(reasonRateLimit),
		"include_vh_rate_limits":          ignore,
		"hash_policy":                     ignore,
		"cors":                            refuse(reasonCORS),
		"max_grpc_timeout":                ignore,
		"grpc_timeout_offset":             ignore,
		"upgrade_configs":                 ignore,
		"internal_redirect_policy":        refuse("internal redirects are not supported"),
		"internal_redirect_action":        refuse("internal redirects are not supported"),
		"max_internal_redirects":          refuse("internal redirects are not supported"),
		"hedge_policy":                    refuse(reasonHedge),
		"max_stream_duration":             ignore,
	})
	weightedClustersPolicy = newPolicy("Route.route.weighted_clusters", &routev3.WeightedCluster{}, map[protoreflect.Name]rule{
		"clusters":           honour,
		"total_weight":       honour,
		"runtime_key_prefix": ignore,
		"header_name":        refuse(reasonClusterHdr),
		"use_hash_policy":    ignore,
	})
	clusterWeightPolicyL7 = newPolicy("Route.route.weighted_clusters.clusters", &routev3.WeightedCluster_ClusterWeight{}, map[protoreflect.Name]rule{
		"name":                       honour,
		"weight":                     honour,
		"cluster_header":             refuse(reasonClusterHdr),
		"metadata_match":             refuse("endpoint subsets are not supported"),
		"request_headers_to_add":     refuse(reasonRouteLevel),
		"request_headers_to_remove":  refuse(reasonRouteLevel),
		"response_headers_to_add":    refuse(reasonResponse),
		"response_headers_to_remove": refuse(reasonResponse),
		"typed_per_filter_config":    refuse(reasonPerFilter),
		"host_rewrite_literal":       refuse(reasonHostRW),
	})
	retryPolicyPolicy = newPolicy("Route.route.retry_policy", &routev3.RetryPolicy{}, map[protoreflect.Name]rule{
		"retry_on":                          honour,
		"num_retries":                       honour,
		"per_try_timeout":                   honour,
		"per_try_idle_timeout":              ignore,
		"retry_priority":                    refuse("retry priorities are not supported"),
		"retry_host_predicate":              ignore,
		"retry_options_predicates":          ignore,
		"host_selection_retry_max_attempts": ignore,
		"retriable_status_codes":            refuse("retriable_status_codes is not supported yet; use retry_on 5xx or gateway-error"),
		"retry_back_off":                    ignore,
		"rate_limited_retry_back_off":       ignore,
		"retriable_headers":                 refuse("retriable_headers is not supported"),
		"retriable_request_headers":         refuse("retriable_request_headers is not supported"),
		"refresh_cluster_on_retry":          ignore,
	})
	headerValueOptionPolicy = newPolicy("Route.request_headers_to_add", &corev3.HeaderValueOption{}, map[protoreflect.Name]rule{
		"header":           honour,
		"append":           honour,
		"append_action":    honour,
		"keep_empty_value": ignore,
	})
	headerValuePolicy = newPolicy("Route.request_headers_to_add.header", &corev3.HeaderValue{}, map[protoreflect.Name]rule{
		"key":       honour,
		"value":     honour,
		"raw_value": honour,
	})
)

func (t *tally) routeConfig(name string, rc *routev3.RouteConfiguration) (*model.HTTPRoutes, *fieldError) {
	if rc == nil {
		return nil, errAt("", "nil resource")
	}
	if err := t.check(rc.ProtoReflect(), routeConfigPolicy); err != nil {
		return nil, err
	}
	if err := nameMatches(rc.GetName(), name); err != nil {
		return nil, err
	}
	return t.routeTable(name, rc)
}

// inlineRoutes translates the route configuration an HTTP connection
// manager carries inline (route_config), whose name is optional.
func (t *tally) inlineRoutes(rc *routev3.RouteConfiguration) (*model.HTTPRoutes, *fieldError) {
	if err := t.check(rc.ProtoReflect(), routeConfigPolicy); err != nil {
		return nil, err
	}
	return t.routeTable(rc.GetName(), rc)
}

// routeTable translates the virtual hosts of a checked route configuration.
func (t *tally) routeTable(name string, rc *routev3.RouteConfiguration) (*model.HTTPRoutes, *fieldError) {
	out := &model.HTTPRoutes{Name: name, VirtualHosts: make([]model.VirtualHost, 0, len(rc.GetVirtualHosts())), IgnorePort: rc.GetIgnorePortInHostMatching()}
	owner := map[string]int{} // domain → virtual host
	for i, vh := range rc.GetVirtualHosts() {
		v, err := t.virtualHost(vh, rc.GetIgnorePortInHostMatching())
		if err != nil {
			return nil, err.in(index("virtual_hosts", i))
		}
		for j, d := range v.Domains {
			if k, dup := owner[d]; dup {
				return nil, errAt(fmt.Sprintf("virtual_hosts[%d].domains[%d]", i, j), "%q is also a domain of virtual_hosts[%d]", d, k)
			}
			owner[d] = i
		}
		out.VirtualHosts = append(out.VirtualHosts, v)
	}
	return out, nil
}

func (t *tally) virtualHost(vh *routev3.VirtualHost, ignorePort bool) (model.VirtualHost, *fieldError) {
	if vh == nil {
		return model.VirtualHost{}, errAt("", "missing")
	}
	if err := t.check(vh.ProtoReflect(), virtualHostPolicy); err != nil {
		return model.VirtualHost{}, err
	}
	v := model.VirtualHost{Name: vh.GetName()}
	if len(vh.GetDomains()) == 0 {
		return v, errAt("domains", "empty; want at least one domain (\"*\" for any)")
	}
	for i, d := range vh.GetDomains() {
		d, err := domain(d, ignorePort)
		if err != nil {
			return v, err.in(index("domains", i))
		}
		v.Domains = append(v.Domains, d)
	}
	var defaultRetry *model.RetryPolicy
	if rp := vh.GetRetryPolicy(); rp != nil {
		r, err := t.retryPolicy(rp)
		if err != nil {
			return v, err.in("retry_policy")
		}
		defaultRetry = r
	}
	for i, r := range vh.GetRoutes() {
		route, err := t.route(r, defaultRetry)
		if err != nil {
			return v, err.in(index("routes", i))
		}
		v.Routes = append(v.Routes, route)
	}
	return v, nil
}

// domain checks one domain of a virtual host and lower-cases it: a name,
// optionally with a port, or with one wildcard "*" at its start or end.
func domain(d string, ignorePort bool) (string, *fieldError) {
	d = strings.ToLower(d)
	switch {
	case d == "":
		return "", errAt("", "empty")
	case d == "*":
		return d, nil
	case strings.Count(d, "*") > 1 || (strings.Contains(d, "*") && !strings.HasPrefix(d, "*") && !strings.HasSuffix(d, "*")):
		return "", errAt("", "%q: a wildcard may only be the first or the last character", d)
	}
	if ignorePort && !strings.Contains(d, "*") {
		if i := strings.LastIndexByte(d, ':'); i > 0 && !strings.HasSuffix(d, "]") {
			d = d[:i]
		}
	}
	return d, nil
}

func (t *tally) route(r *routev3.Route, defaultRetry *model.RetryPolicy) (model.HTTPRoute, *fieldError) {
	if r == nil {
		return model.HTTPRoute{}, errAt("", "missing")
	}
	if err := t.check(r.ProtoReflect(), routePolicy); err != nil {
		return model.HTTPRoute{}, err
	}
	out := model.HTTPRoute{Name: r.GetName()}
	m, err := t.routeMatch(r.GetMatch())
	if err != nil {
		return out, err.in("match")
	}
	out.Match = m
	ra := r.GetRoute()
	if ra == nil {
		return out, errAt("route", "missing; a route needs a route action (redirects and direct responses are not supported yet)")
	}
	a, err := t.routeAction(ra, m.PathKind)
	if err != nil {
		return out, err.in("route")
	}
	if a.Retry == nil {
		a.Retry = defaultRetry
	}
	for i, h := range r.GetRequestHeadersToAdd() {
		hv, err := t.headerValue(h)
		if err != nil {
			return out, err.in(index("request_headers_to_add", i))
		}
		a.AddHeaders = append(a.AddHeaders, hv)
	}
	for i, h := range r.GetRequestHeadersToRemove() {
		h = strings.ToLower(h)
		if err := mutableHeader(h); err != nil {
			return out, err.in(index("request_headers_to_remove", i))
		}
		a.RemoveHeaders = append(a.RemoveHeaders, h)
	}
	out.Action = a
	return out, nil
}

func (t *tally) routeMatch(m *routev3.RouteMatch) (model.HTTPMatch, *fieldError) {
	if m == nil {
		return model.HTTPMatch{}, errAt("", "missing")
	}
	if err := t.check(m.ProtoReflect(), routeMatchPolicy); err != nil {
		return model.HTTPMatch{}, err
	}
	out := model.HTTPMatch{CaseSensitive: true}
	if cs := m.GetCaseSensitive(); cs != nil {
		out.CaseSensitive = cs.GetValue()
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.PathKind, out.Path = model.PathPrefix, p.Prefix
	case *routev3.RouteMatch_Path:
		out.PathKind, out.Path = model.PathExact, p.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := t.regex(p.SafeRegex, regexMatcherPolicy)
		if err != nil {
			return out, err.in("safe_regex")
		}
		out.PathKind, out.PathRegex = model.PathRegex, re
	case nil:
		return out, errAt("", "no path match; set prefix, path or safe_regex")
	}
	for i, h := range m.GetHeaders() {
		hm, err := t.headerMatch(h, routeMatchers)
		if err != nil {
			return out, err.in(index("headers", i))
		}
		out.Headers = append(out.Headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		qm, err := t.queryMatch(q)
		if err != nil {
			return out, err.in(index("query_parameters", i))
		}
		out.Query = append(out.Query, qm)
	}
	return out, nil
}

// pseudoHeaders are the pseudo-headers a route or an HTTP RBAC may match on.
var pseudoHeaders = map[string]bool{":method": true, ":authority": true, ":path": true, ":scheme": true}

// matchers are the field policies of the header and string matchers at one
// place in a resource (a route's match, an HTTP RBAC's rules), so that their
// ignored fields are counted under that place's key.
type matchers struct {
	what   string  // what does the matching, for errors: "a route"
	header *policy // HeaderMatcher
	str    *policy // StringMatcher
	regex  *policy // RegexMatcher; nil where str refuses safe_regex
}

// headerMatch translates a HeaderMatcher checked against m's policies.
// The header host is :authority, as in xDS, where a request's Host header
// is its :authority.
func (t *tally) headerMatch(h *routev3.HeaderMatcher, m *matchers) (model.HeaderMatch, *fieldError) {
	if h == nil {
		return model.HeaderMatch{}, errAt("", "missing")
	}
	if err := t.check(h.ProtoReflect(), m.header); err != nil {
		return model.HeaderMatch{}, err
	}
	name := strings.ToLower(h.GetName())
	switch {
	case name == "":
		return model.HeaderMatch{}, errAt("name", "empty")
	case name == "host":
		// Go's server takes Host out of a request's headers, so a
		// matcher of "host" would never see it.
		name = ":authority"
	case strings.HasPrefix(name, ":") && !pseudoHeaders[name]:
		return model.HeaderMatch{}, errAt("name", "%q: the pseudo-headers %s can match are :method, :authority, :path and :scheme", name, m.what)
	}
	out := model.HeaderMatch{Name: name, Invert: h.GetInvertMatch()}
	var err *fieldError
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		out.Value = model.StringMatch{Kind: model.MatchExact, Value: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		out.Value, err = nonEmpty(model.MatchPrefix, s.PrefixMatch, "prefix_match")
	case *routev3.HeaderMatcher_SuffixMatch:
		out.Value, err = nonEmpty(model.MatchSuffix, s.SuffixMatch, "suffix_match")
	case *routev3.HeaderMatcher_ContainsMatch:
		out.Value, err = nonEmpty(model.MatchContains, s.ContainsMatch, "contains_match")
	case *routev3.HeaderMatcher_SafeRegexMatch:
		var re *regexp.Regexp
		re, err = t.regex(s.SafeRegexMatch, m.regex)
		if err != nil {
			err = err.in("safe_regex_match")
		}
		out.Value = model.StringMatch{Kind: model.MatchRegex, Regex: re}
	case *routev3.HeaderMatcher_StringMatch:
		out.Value, err = t.stringMatch(s.StringMatch, m)
		if err != nil {
			err = err.in("string_match")
		}
	case *routev3.HeaderMatcher_PresentMatch:
		out.Present = true
		if !s.PresentMatch {
			// present_match: false asks for absence, as invert does.
			out.Invert = !out.Invert
		}
	case nil:
		// No specifier: the header must be present.
		out.Present = true
	}
	return out, err
}

func (t *tally) queryMatch(q *routev3.QueryParameterMatcher) (model.QueryMatch, *fieldError) {
	if q == nil {
		return model.QueryMatch{}, errAt("", "missing")
	}
	if err := t.check(q.ProtoReflect(), queryMatcherPolicy); err != nil {
		return model.QueryMatch{}, err
	}
	if q.GetName() == "" {
		return model.QueryMatch{}, errAt("name", "empty")
	}
	out := model.QueryMatch{Name: q.GetName()}
	switch s := q.GetQueryParameterMatchSpecifier().(type) {
	case *routev3.QueryParameterMatcher_StringMatch:
		v, err := t.stringMatch(s.StringMatch, routeMatchers)
		if err != nil {
			return out, err.in("string_match")
		}
		out.Value = v
	case *routev3.QueryParameterMatcher_PresentMatch:
		if !s.PresentMatch {
			return out, errAt("present_match", "false is not supported; omit the matcher")
		}
		out.Present = true
	case nil:
		out.Present = true
	}
	return out, nil
}

func nonEmpty(kind model.MatchKind, v, field string) (model.StringMatch, *fieldError) {
	if v == "" {
		return model.StringMatch{}, errAt(field, "empty; want at least one character")
	}
	return model.StringMatch{Kind: kind, Value: v}, nil
}

// regex compiles a RegexMatcher checked against pol; RE2's syntax is Go's.
// It must match the whole value, as in xDS.
func (t *tally) regex(rm *stringmatcherv3.RegexMatcher, pol *policy) (*regexp.Regexp, *fieldError) {
	if err := t.check(rm.ProtoReflect(), pol); err != nil {
		return nil, err
	}
	if rm.GetRegex() == "" {
		return nil, errAt("regex", "empty")
	}
	re, err := regexp.Compile("^(?:" + rm.GetRegex() + ")$")
	if err != nil {
		return nil, errAt("regex", "%q is not a valid RE2 expression: %v", rm.GetRegex(), strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	return re, nil
}

func (t *tally) routeAction(ra *routev3.RouteAction, kind model.PathKind) (model.HTTPAction, *fieldError) {
	if err := t.check(ra.ProtoReflect(), routeActionPolicy); err != nil {
		return model.HTTPAction{}, err
	}
	var out model.HTTPAction
	switch c := ra.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if c.Cluster == "" {
			return out, errAt("cluster", "empty cluster name")
		}
		if err := notDirectory(c.Cluster); err != nil {
			return out, err.in("cluster")
		}
		out.Clusters = []model.WeightedCluster{{Name: c.Cluster, Weight: 1}}
	case *routev3.RouteAction_WeightedClusters:
		wcs, err := t.routeWeightedClusters(c.WeightedClusters)
		if err != nil {
			return out, err.in("weighted_clusters")
		}
		out.Clusters = wcs
	case nil:
		return out, errAt("cluster", "missing; set cluster or weighted_clusters")
	}
	if p := ra.GetPrefixRewrite(); p != "" {
		if kind != model.PathPrefix {
			return out, errAt("prefix_rewrite", "needs a prefix match (the route matches by path or safe_regex)")
		}
		out.PrefixRewrite = p
	}
	out.Timeout = DefaultRouteTimeout
	if d := ra.GetTimeout(); d != nil {
		v, err := duration(d)
		if err != nil {
			return out, err.in("timeout")
		}
		out.Timeout = v
	}
	if rp := ra.GetRetryPolicy(); rp != nil {
		r, err := t.retryPolicy(rp)
		if err != nil {
			return out, err.in("retry_policy")
		}
		out.Retry = r
	}
	return out, nil
}

func (t *tally) routeWeightedClusters(wc *routev3.WeightedCluster) ([]model.WeightedCluster, *fieldError) {
	if err := t.check(wc.ProtoReflect(), weightedClustersPolicy); err != nil {
		return nil, err
	}
	cws := wc.GetClusters()
	if len(cws) == 0 {
		return nil, errAt("clusters", "empty")
	}
	out := make([]model.WeightedCluster, 0, len(cws))
	var sum uint64
	for i, cw := range cws {
		if cw == nil {
			return nil, errAt(index("clusters", i), "missing")
		}
		if err := t.check(cw.ProtoReflect(), clusterWeightPolicyL7); err != nil {
			return nil, err.in(index("clusters", i))
		}
		if err := splitName(cw.GetName(), i, func(j int) string { return out[j].Name }); err != nil {
			return nil, err
		}
		w := cw.GetWeight().GetValue()
		sum += uint64(w)
		out = append(out, model.WeightedCluster{Name: cw.GetName(), Weight: w})
	}
	if sum == 0 {
		return nil, errAt("clusters", "every weight is 0; at least one cluster needs a weight")
	}
	if tw := wc.GetTotalWeight(); tw != nil && uint64(tw.GetValue()) != sum {
		return nil, errAt("total_weight", "%d, but the weights add up to %d", tw.GetValue(), sum)
	}
	return out, nil
}

// retryOn are the retry_on conditions Sluice honours.
var retryOn = map[string]model.RetryOn{
	"5xx":             model.Retry5xx,
	"gateway-error":   model.RetryGatewayError,
	"reset":           model.RetryReset,
	"connect-failure": model.RetryConnectFailure,
}

func (t *tally) retryPolicy(rp *routev3.RetryPolicy) (*model.RetryPolicy, *fieldError) {
	if err := t.check(rp.ProtoReflect(), retryPolicyPolicy); err != nil {
		return nil, err
	}
	out := &model.RetryPolicy{NumRetries: 1}
	for c := range strings.SplitSeq(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		on, ok := retryOn[c]
		if !ok {
			return nil, errAt("retry_on", "%q is not supported; want 5xx, gateway-error, reset or connect-failure", c)
		}
		out.On |= on
	}
	if out.On == 0 {
		return nil, errAt("retry_on", "empty; want one or more of 5xx, gateway-error, reset, connect-failure")
	}
	if n := rp.GetNumRetries(); n != nil {
		out.NumRetries = n.GetValue()
	}
	if d := rp.GetPerTryTimeout(); d != nil {
		v, err := duration(d)
		if err != nil {
			return nil, err.in("per_try_timeout")
		}
		out.PerTryTimeout = v
	}
	return out, nil
}

func duration(d *durationpb.Duration) (time.Duration, *fieldError) {
	if err := d.CheckValid(); err != nil {
		return 0, errAt("", "invalid duration: %v", err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, errAt("", "%s is negative", v)
	}
	return v, nil
}

// mutableHeader refuses the headers a route may not add or remove.
func mutableHeader(name string) *fieldError {
	if name == "" {
		return errAt("", "empty header name")
	}
	if strings.HasPrefix(name, ":") || name == "host" {
		return errAt("", "%q cannot be changed by a route", name)
	}
	return nil
}

func (t *tally) headerValue(h *corev3.HeaderValueOption) (model.HeaderValue, *fieldError) {
	if h == nil {
		return model.HeaderValue{}, errAt("", "missing")
	}
	if err := t.check(h.ProtoReflect(), headerValueOptionPolicy); err != nil {
		return model.HeaderValue{}, err
	}
	hv := h.GetHeader()
	if hv == nil {
		return model.HeaderValue{}, errAt("header", "missing")
	}
	if err := t.check(hv.ProtoReflect(), headerValuePolicy); err != nil {
		return model.HeaderValue{}, err.in("header")
	}
	out := model.HeaderValue{Name: strings.ToLower(hv.GetKey()), Value: hv.GetValue(), Append: true}
	if len(hv.GetRawValue()) > 0 {
		out.Value = string(hv.GetRawValue())
	}
	if err := mutableHeader(out.Name); err != nil {
		return out, err.in("header.key")
	}
	if a := h.GetAppend(); a != nil {
		if h.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			return out, errAt("append", "set with append_action; use append_action alone")
		}
		out.Append = a.GetValue()
	}
	switch act := h.GetAppendAction(); act {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		out.Append = false
	default:
		return out, errAt("append_action", "%s is not supported; want APPEND_IF_EXISTS_OR_ADD or OVERWRITE_IF_EXISTS_OR_ADD", act)
	}
	return out, nil
}
