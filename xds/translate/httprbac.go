package translate

import (
	"strconv"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	stringmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// HTTP RBAC: an authorization policy on each request of an L7 service. Its
// rules are the L4 RBAC's (rbacRulesPolicy, rbacRulePolicy, ...) except
// permissions and principals, which may also match the request. As at L4,
// nothing that decides is ignored: a part of a policy Sluice does not
// enforce would let through what the control plane meant to block.
const reasonHTTPMetadata = "metadata matching is not supported; Sluice has no dynamic or route metadata to match"

var (
	httpRBACFilterPolicy = newPolicy("HTTP RBAC", &rbachttpv3.RBAC{}, map[protoreflect.Name]rule{
		"rules":        honour,
		"shadow_rules": honour,
		// The model has one name per policy, the filter's, for enforced and
		// shadow rules alike; a prefix would only rename counters.
		"rules_stat_prefix":        ignore,
		"shadow_rules_stat_prefix": ignore,
		// Every decision names its rule (l7.Decision) whatever this says.
		"track_per_rule_stats": ignore,
		"matcher":              refuse("the matcher API is not supported for RBAC; use rules"),
		"shadow_matcher":       refuse("the matcher API is not supported for RBAC; use shadow_rules"),
	})
	httpRBACPermissionPolicy = newPolicy("HTTP RBAC.rules.policies.permissions", &rbacconfigv3.Permission{}, map[protoreflect.Name]rule{
		"any":                    honour,
		"header":                 honour,
		"url_path":               honour,
		"destination_port":       honour,
		"destination_port_range": honour,
		"destination_ip":         honour,
		"and_rules":              honour,
		"or_rules":               honour,
		"not_rule":               honour,
		"uri_template":           refuse("URI template matching is not supported; use url_path"),
		"requested_server_name":  refuse("server name (SNI) matching is not supported: Sluice does not terminate TLS, so requests have no server name"),
		"metadata":               refuse(reasonHTTPMetadata),
		"sourced_metadata":       refuse(reasonHTTPMetadata),
		"matcher":                refuse("custom permission matchers are not supported"),
	})
	httpRBACPrincipalPolicy = newPolicy("HTTP RBAC.rules.policies.principals", &rbacconfigv3.Principal{}, map[protoreflect.Name]rule{
		"any":              honour,
		"authenticated":    honour,
		"source_ip":        honour,
		"direct_remote_ip": honour,
		"remote_ip":        honour,
		"header":           honour,
		"and_ids":          honour,
		"or_ids":           honour,
		"not_id":           honour,
		"url_path":         refuse("a URL path principal is not supported; match the path with a url_path permission"),
		"metadata":         refuse(reasonHTTPMetadata),
		"sourced_metadata": refuse(reasonHTTPMetadata),
		"filter_state":     refuse("filter state matching is not supported; Sluice has no filter state"),
		"custom":           refuse("custom principal extensions are not supported"),
	})
	httpRBACPathMatcherPolicy = newPolicy("HTTP RBAC.rules.policies.permissions.url_path", &stringmatcherv3.PathMatcher{}, map[protoreflect.Name]rule{
		"path": honour,
	})
	httpRBACHeaderMatcherPolicy = newPolicy("HTTP RBAC.rules.policies.header", &routev3.HeaderMatcher{}, headerMatcherRules)
	httpRBACStringMatcherPolicy = newPolicy("HTTP RBAC.rules.policies.string_match", &stringmatcherv3.StringMatcher{}, stringMatcherRules)
	httpRBACRegexPolicy         = newPolicy("HTTP RBAC.rules.policies.safe_regex", &stringmatcherv3.RegexMatcher{}, regexMatcherRules)

	// httpRBACMatchers are the policies of an HTTP RBAC's header matchers
	// (of permissions and principals) and url_path matchers.
	httpRBACMatchers = &matchers{what: "an HTTP RBAC policy", header: httpRBACHeaderMatcherPolicy, str: httpRBACStringMatcherPolicy, regex: httpRBACRegexPolicy}
)

// TranslateHTTPRBAC checks and translates an HTTP RBAC filter
// (envoy.filters.http.rbac) named name: one of the policies every request
// of the L7 service whose http_connection_manager carries it must pass
// (docs/l7.md). A filter with neither rules nor shadow_rules gives a policy
// with neither, which enforces and records nothing. The error, if any, is a
// *ResourceError of type "HTTP RBAC" naming the field; ignored fields are
// counted as Translate counts them.
func TranslateHTTPRBAC(name string, f *rbachttpv3.RBAC) (model.Policy, map[string]int, error) {
	t := newTally()
	if f == nil {
		return model.Policy{}, nil, errAt("", "nil filter configuration").resource("HTTP RBAC", name)
	}
	pol, _, err := t.httpRBACFilter(f, name, 0)
	if err != nil {
		return model.Policy{}, nil, err.resource("HTTP RBAC", name)
	}
	t.done()
	return pol, t.counts, nil
}

// httpRBACFilter translates an HTTP RBAC filter, the i-th HTTP filter of
// its connection manager, named name, into a policy named after the filter
// (or "rbac#<i>" if it has no name). It reports false, and no policy, for a
// filter with neither rules nor shadow_rules: Envoy enforces and records
// nothing for it. Errors are relative to the RBAC message.
func (t *tally) httpRBACFilter(f *rbachttpv3.RBAC, name string, i int) (model.Policy, bool, *fieldError) {
	if err := t.check(f.ProtoReflect(), httpRBACFilterPolicy); err != nil {
		return model.Policy{}, false, err
	}
	pol := model.Policy{Name: name}
	if pol.Name == "" {
		pol.Name = "rbac#" + strconv.Itoa(i)
	}
	if err := t.ruleSets(&pol, f.GetRules(), f.GetShadowRules(), true); err != nil {
		return model.Policy{}, false, err
	}
	return pol, pol.Rules != nil || pol.Shadow != nil, nil
}

// urlPath translates an RBAC url_path: a match of the request's path
// without its query.
func (t *tally) urlPath(pm *stringmatcherv3.PathMatcher) (model.StringMatch, *fieldError) {
	if pm == nil {
		return model.StringMatch{}, errAt("", "missing")
	}
	if err := t.check(pm.ProtoReflect(), httpRBACPathMatcherPolicy); err != nil {
		return model.StringMatch{}, err
	}
	sm := pm.GetPath()
	if sm == nil {
		return model.StringMatch{}, errAt("path", "missing; want a string matcher of the path")
	}
	m, err := t.stringMatch(sm, httpRBACMatchers)
	if err != nil {
		return model.StringMatch{}, err.in("path")
	}
	return m, nil
}
