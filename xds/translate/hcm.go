package translate

import (
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// HTTP filter types, by the full name of their typed_config message.
const (
	typeRouter   = "envoy.extensions.filters.http.router.v3.Router"
	typeHTTPRBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"
)

// Ignored keys of HTTP filters that are accepted and not run.
const (
	keyOptionalFilter = "HttpConnectionManager.http_filters.is_optional" // an optional filter of a type Sluice does not run
	keyDisabledFilter = "HttpConnectionManager.http_filters.disabled"    // a disabled filter: no route can enable it
)

// l7Plan is what an HTTP connection manager asks for: routes, by name
// (RDS) or inline, and the HTTP policies requests must pass.
type l7Plan struct {
	rds    string    // the RouteConfiguration it reads; "" with inline routes
	inline routePlan // route_config, when rds is ""
	// policies are the HTTP RBAC filters' policies in filter order, nil if
	// none. Every service of the listener shares the slice.
	policies []model.Policy
}

// routePlan is a translated route configuration and the clusters its
// routes name, sorted, each once: the pools its services resolve.
type routePlan struct {
	routes   *model.HTTPRoutes
	clusters []string
}

func newRoutePlan(routes *model.HTTPRoutes) routePlan {
	var clusters []string
	for _, vh := range routes.VirtualHosts {
		for _, r := range vh.Routes {
			for _, c := range r.Action.Clusters {
				clusters = append(clusters, c.Name)
			}
		}
	}
	slices.Sort(clusters)
	return routePlan{routes: routes, clusters: slices.Clip(slices.Compact(clusters))}
}

// missingRoutes is the routing of a service whose RouteConfiguration has
// not arrived: no virtual host, so no request has a route.
func missingRoutes(name string) routePlan {
	return routePlan{routes: &model.HTTPRoutes{Name: name}}
}

// reasonHeaders is why a connection manager setting that adds, removes or
// rewrites request headers is refused.
const reasonHeaders = "changes request headers; header changes are supported on routes only (request_headers_to_add/remove of a route)"

var (
	// An HTTP connection manager: what changes where a request goes or
	// what it carries is refused; what tunes a proxy's codec, timeouts,
	// logs, tracing or request IDs is ignored and counted.
	hcmPolicy = newPolicy("HttpConnectionManager", &hcmv3.HttpConnectionManager{}, map[protoreflect.Name]rule{
		"rds":                                honour,
		"route_config":                       honour,
		"http_filters":                       honour,
		"codec_type":                         honour,
		"normalize_path":                     honour,
		"path_with_escaped_slashes_action":   honour,
		"common_http_protocol_options":       honour,
		"scoped_routes":                      refuse("scoped routes are not supported; use rds or route_config"),
		"stat_prefix":                        ignore,
		"tracing":                            ignore,
		"http1_safe_max_connection_duration": ignore,
		"http_protocol_options":              ignore,
		"http2_protocol_options":             ignore,
		"http3_protocol_options":             ignore,
		"server_name":                        ignore, // a response header
		"server_header_transformation":       ignore,
		"max_request_headers_kb":             ignore,
		"stream_idle_timeout":                ignore,
		"stream_flush_timeout":               ignore,
		"request_timeout":                    ignore,
		"request_headers_timeout":            ignore,
		"drain_timeout":                      ignore,
		"drain_timeout_jitter":               ignore,
		"delayed_close_timeout":              ignore,
		"access_log":                         ignore,
		"access_log_flush_interval":          ignore,
		"flush_access_log_on_new_request":    ignore,
		"access_log_options":                 ignore,
		"use_remote_address":                 ignore,
		"xff_num_trusted_hops":               ignore,
		"internal_address_config":            ignore,
		"skip_xff_append":                    ignore,
		"append_x_forwarded_port":            ignore,
		"represent_ipv4_remote_address_as_ipv4_mapped_ipv6": ignore,
		"generate_request_id":                               ignore,
		"preserve_external_request_id":                      ignore,
		"always_set_request_id_in_response":                 ignore,
		"request_id_extension":                              ignore,
		"proxy_100_continue":                                ignore,
		"upgrade_configs":                                   ignore,
		"local_reply_config":                                ignore, // the proxy's own responses
		"stream_error_on_invalid_http_message":              ignore,
		"proxy_status_config":                               ignore, // a response header
		"append_local_overload":                             ignore,
		"add_proxy_protocol_connection_state":               ignore,
		"record_route_resolution_stats":                     ignore,
		"add_user_agent":                                    refuse(reasonHeaders),
		"via":                                               refuse(reasonHeaders),
		"scheme_header_transformation":                      refuse(reasonHeaders),
		"early_header_mutation_extensions":                  refuse(reasonHeaders),
		"forward_client_cert_details":                       refuse("forwarding client certificate details needs TLS termination, which is not supported"),
		"set_current_client_cert_details":                   refuse("forwarding client certificate details needs TLS termination, which is not supported"),
		"forward_client_cert_matcher":                       refuse("forwarding client certificate details needs TLS termination, which is not supported"),
		"original_ip_detection_extensions":                  refuse("original IP detection extensions are not supported"),
		"merge_slashes":                                     refuse("merging slashes is not supported; requests are routed by the path as sent"),
		"path_normalization_options":                        refuse("path normalization is not supported; requests are routed by the path as sent"),
		"strip_matching_host_port":                          refuse("stripping the host's port is not supported; use ignore_port_in_host_matching in the route configuration"),
		"strip_any_host_port":                               refuse("stripping the host's port is not supported; use ignore_port_in_host_matching in the route configuration"),
		"strip_trailing_host_dot":                           refuse("stripping the host's trailing dot is not supported; list the domain with the dot too"),
		"typed_header_validation_config":                    refuse("header validation extensions are not supported"),
		"forward_proto_config":                              refuse(reasonHeaders),
	})
	hcmProtocolPolicy = newPolicy("HttpConnectionManager.common_http_protocol_options", &corev3.HttpProtocolOptions{}, map[protoreflect.Name]rule{
		"idle_timeout":                   ignore,
		"max_connection_duration":        ignore,
		"max_connection_duration_jitter": ignore,
		"max_headers_count":              ignore,
		"max_response_headers_kb":        ignore,
		"max_stream_duration":            ignore,
		"max_requests_per_connection":    ignore,
		"headers_with_underscores_action": refuse("refusing requests or dropping headers with underscores is not supported; " +
			"headers are forwarded as sent (ALLOW)"),
	})
	rdsPolicy = newPolicy("HttpConnectionManager.rds", &hcmv3.Rds{}, map[protoreflect.Name]rule{
		"config_source":     honour,
		"route_config_name": honour,
	})
	rdsConfigSourcePolicy = configSourcePolicy("HttpConnectionManager.rds.config_source")
	httpFilterPolicy      = newPolicy("HttpConnectionManager.http_filters", &hcmv3.HttpFilter{}, map[protoreflect.Name]rule{
		"name":             honour, // free-form: filters are told apart by typed_config
		"typed_config":     honour,
		"is_optional":      honour,
		"disabled":         honour,
		"config_discovery": refuse("filter config discovery is not supported; send typed_config"),
	})
	routerPolicy = newPolicy("Router", &routerv3.Router{}, map[protoreflect.Name]rule{
		"dynamic_stats":                            ignore,
		"start_child_span":                         ignore,
		"upstream_log":                             ignore,
		"upstream_log_options":                     ignore,
		"suppress_envoy_headers":                   ignore,
		"strict_check_headers":                     ignore,
		"respect_expected_rq_timeout":              ignore,
		"suppress_grpc_request_failure_code_stats": ignore,
		"reject_connect_request_early_data":        ignore,
		"upstream_http_filters":                    refuse("upstream HTTP filters are not supported"),
	})
)

// httpConnectionManager translates the terminal filter of an L7 service
// into p.l7. Errors are relative to the HttpConnectionManager.
func (t *tally) httpConnectionManager(h *hcmv3.HttpConnectionManager, p *listenerPlan) *fieldError {
	if err := t.check(h.ProtoReflect(), hcmPolicy); err != nil {
		return err
	}
	switch c := h.GetCodecType(); c {
	case hcmv3.HttpConnectionManager_AUTO:
	case hcmv3.HttpConnectionManager_HTTP1, hcmv3.HttpConnectionManager_HTTP2:
		// The L7 proxy is not restricted to one HTTP version.
		t.add("HttpConnectionManager.codec_type=" + c.String())
	default:
		return errAt("codec_type", "%s is not supported; use AUTO, HTTP1 or HTTP2", c)
	}
	if h.GetNormalizePath().GetValue() {
		return errAt("normalize_path", "path normalization is not supported; requests are routed by the path as sent")
	}
	switch a := h.GetPathWithEscapedSlashesAction(); a {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
	default:
		return errAt("path_with_escaped_slashes_action", "%s is not supported; escaped slashes are kept as sent (KEEP_UNCHANGED)", a)
	}
	if o := h.GetCommonHttpProtocolOptions(); o != nil {
		if err := t.check(o.ProtoReflect(), hcmProtocolPolicy); err != nil {
			return err.in("common_http_protocol_options")
		}
	}
	l7 := &l7Plan{}
	switch spec := h.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		name, err := t.rds(spec.Rds)
		if err != nil {
			return err.in("rds")
		}
		l7.rds = name
	case *hcmv3.HttpConnectionManager_RouteConfig:
		routes, err := t.inlineRoutes(spec.RouteConfig)
		if err != nil {
			return err.in("route_config")
		}
		l7.inline = newRoutePlan(routes)
	default:
		// scoped_routes is refused by the policy above.
		return errAt("rds", "missing; set rds or route_config")
	}
	if err := t.httpFilters(h.GetHttpFilters(), l7); err != nil {
		return err
	}
	p.l7 = l7
	return nil
}

// rds returns the name of the RouteConfiguration an HTTP connection manager
// reads. Errors are relative to the Rds.
func (t *tally) rds(r *hcmv3.Rds) (string, *fieldError) {
	if err := t.check(r.ProtoReflect(), rdsPolicy); err != nil {
		return "", err
	}
	if src := r.GetConfigSource(); src != nil {
		if err := t.configSource(src, rdsConfigSourcePolicy); err != nil {
			return "", err.in("config_source")
		}
	}
	if r.GetRouteConfigName() == "" {
		return "", errAt("route_config_name", "empty; name the RouteConfiguration")
	}
	return r.GetRouteConfigName(), nil
}

// httpFilters translates an HTTP connection manager's filters: any number
// of HTTP RBAC filters, then the router, which must be last. Errors are
// relative to the HttpConnectionManager.
func (t *tally) httpFilters(filters []*hcmv3.HttpFilter, l7 *l7Plan) *fieldError {
	router := -1
	for i, f := range filters {
		isRouter, err := t.httpFilter(f, i, l7)
		if err != nil {
			return err.in(index("http_filters", i))
		}
		if router >= 0 {
			return errAt(index("http_filters", i), "follows the router (http_filters[%d]), which must be the last HTTP filter", router)
		}
		if isRouter {
			router = i
		}
	}
	if router < 0 {
		return errAt("http_filters", "no router (%s); it must be the last HTTP filter", typeRouter)
	}
	return nil
}

// httpFilter accepts the router, reporting true, and an HTTP RBAC filter,
// whose policy it adds to l7. A filter of another type is refused unless it
// is_optional: Envoy skips an optional filter it does not know, and so does
// Sluice, counting it. A disabled filter runs only where a route enables it
// (typed_per_filter_config), which Sluice refuses: so it never runs, and is
// checked but not applied. i is the filter's index.
func (t *tally) httpFilter(f *hcmv3.HttpFilter, i int, l7 *l7Plan) (bool, *fieldError) {
	if f == nil {
		return false, errAt("", "missing")
	}
	if err := t.check(f.ProtoReflect(), httpFilterPolicy); err != nil {
		return false, err
	}
	tc := f.GetTypedConfig()
	if tc == nil {
		return false, errAt("typed_config", "missing; Sluice identifies HTTP filters by the type of typed_config")
	}
	switch name := typeName(tc); name {
	case typeRouter:
		if f.GetDisabled() {
			return false, errAt("disabled", "the router cannot be disabled: it sends the requests upstream")
		}
		r := &routerv3.Router{}
		if err := unpack(tc, r); err != nil {
			return false, err.in("typed_config")
		}
		if err := t.check(r.ProtoReflect(), routerPolicy); err != nil {
			return false, err.in("typed_config")
		}
		return true, nil
	case typeHTTPRBAC:
		cfg := &rbachttpv3.RBAC{}
		if err := unpack(tc, cfg); err != nil {
			return false, err.in("typed_config")
		}
		pol, ok, err := t.httpRBACFilter(cfg, f.GetName(), i)
		if err != nil {
			return false, err.in("typed_config")
		}
		switch {
		case f.GetDisabled():
			t.add(keyDisabledFilter)
		case ok:
			l7.policies = append(l7.policies, pol)
		}
		return false, nil
	default:
		if f.GetIsOptional() {
			t.add(keyOptionalFilter)
			return false, nil
		}
		return false, errAt("", "unsupported HTTP filter type %s; want %s filters, then %s", typeLabel(name), typeHTTPRBAC, typeRouter)
	}
}
