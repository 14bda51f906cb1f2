package translate

import (
	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	matcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	httpupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	stringmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The field policies: for each message Sluice reads, which fields it
// honours, which it ignores (and counts) and why it refuses the others. A
// field not named is refused. docs/xds.md presents the same tables to users;
// keep the two in step.

// Reasons shared by several rules.
const (
	reasonConnectTime = "Sluice routes at connect time, before any bytes are seen"
	reasonTLSTerm     = "TLS termination is not supported"
	reasonTLSOrig     = "TLS origination is not supported"
	reasonOnlyADS     = "only ADS is supported"
	reasonNoProxy     = "Sluice does not proxy the connection, so it cannot apply this"
	reasonSubsets     = "endpoint subsets (metadata_match) are not supported"
	reasonPipe        = "pipe addresses are not supported; use an IP address"
	reasonInternal    = "internal addresses are not supported; use an IP address"
)

// Listener.
var (
	listenerPolicy = newPolicy("Listener", &listenerv3.Listener{}, map[protoreflect.Name]rule{
		"name":                              honour,
		"address":                           honour,
		"additional_addresses":              honour,
		"filter_chains":                     honour,
		"listener_filters":                  honour,
		"default_filter_chain":              refuse("a default filter chain is not supported; " + reasonConnectTime),
		"filter_chain_matcher":              refuse("filter chain matching is not supported; " + reasonConnectTime),
		"fcds_config":                       refuse("filter chain discovery is not supported"),
		"internal_listener":                 refuse("internal listeners are not supported"),
		"api_listener":                      refuse("API listeners are not supported"),
		"stat_prefix":                       ignore,
		"stats_matcher":                     ignore,
		"metadata":                          honour,
		"drain_type":                        ignore,
		"use_original_dst":                  ignore,
		"per_connection_buffer_limit_bytes": ignore,
		"per_connection_buffer_high_watermark_timeout": ignore,
		"listener_filters_timeout":                     ignore,
		"continue_on_listener_filters_timeout":         ignore,
		"transparent":                                  ignore,
		"freebind":                                     ignore,
		"socket_options":                               ignore,
		"tcp_fast_open_queue_length":                   ignore,
		"traffic_direction":                            ignore,
		"udp_listener_config":                          ignore,
		"connection_balance_config":                    ignore,
		"reuse_port":                                   ignore,
		"enable_reuse_port":                            ignore,
		"access_log":                                   ignore,
		"tcp_backlog_size":                             ignore,
		"max_connections_to_accept_per_socket_event":   ignore,
		"bind_to_port":                                 ignore,
		"enable_mptcp":                                 ignore,
		"ignore_global_conn_limit":                     ignore,
		"bypass_overload_manager":                      ignore,
		"tcp_keepalive":                                ignore,
	})
	additionalAddressPolicy = newPolicy("Listener.additional_addresses", &listenerv3.AdditionalAddress{}, map[protoreflect.Name]rule{
		"address":        honour,
		"socket_options": ignore,
		"tcp_keepalive":  ignore,
	})
	listenerAddressPolicy = addressPolicy("Listener.address")
	listenerSocketPolicy  = vipSocketPolicy("Listener.address.socket_address")
	extraAddressPolicy    = addressPolicy("Listener.additional_addresses.address")
	extraSocketPolicy     = vipSocketPolicy("Listener.additional_addresses.address.socket_address")

	filterChainPolicy = newPolicy("FilterChain", &listenerv3.FilterChain{}, map[protoreflect.Name]rule{
		"filters": honour,
		// An empty match is the same as none; the translator refuses any
		// criterion in it.
		"filter_chain_match":               honour,
		"transport_socket":                 refuse(reasonTLSTerm),
		"use_proxy_proto":                  refuse("PROXY protocol is not supported"),
		"name":                             ignore,
		"metadata":                         ignore,
		"transport_socket_connect_timeout": ignore,
	})
	filterPolicy = newPolicy("Filter", &listenerv3.Filter{}, map[protoreflect.Name]rule{
		"name":             honour, // free-form: filters are told apart by typed_config
		"typed_config":     honour,
		"config_discovery": refuse("filter config discovery is not supported; send typed_config"),
	})
	listenerFilterPolicy = newPolicy("ListenerFilter", &listenerv3.ListenerFilter{}, map[protoreflect.Name]rule{
		"name":             honour,
		"typed_config":     honour,
		"config_discovery": refuse("filter config discovery is not supported; send typed_config"),
		"filter_disabled":  ignore,
	})
)

// addressPolicy is the policy of an Address: only IP socket addresses.
func addressPolicy(key string) *policy {
	return newPolicy(key, &corev3.Address{}, map[protoreflect.Name]rule{
		"socket_address":         honour,
		"pipe":                   refuse(reasonPipe),
		"envoy_internal_address": refuse(reasonInternal),
	}).withClean(3, func(m proto.Message) bool {
		a, ok := m.(*corev3.Address)
		if !ok {
			return false
		}
		_, sock := a.Address.(*corev3.Address_SocketAddress)
		return sock || a.Address == nil
	})
}

// vipSocketPolicy is the policy of a listener's SocketAddress.
func vipSocketPolicy(key string) *policy {
	return newPolicy(key, &corev3.SocketAddress{}, map[protoreflect.Name]rule{
		"protocol":                   honour,
		"address":                    honour,
		"port_value":                 honour,
		"named_port":                 refuse("named ports are not supported; use port_value"),
		"resolver_name":              refuse("custom resolvers are not supported; the address must be an IP literal"),
		"network_namespace_filepath": refuse("network namespaces are not supported; a VIP applies to the whole node"),
		// Only matters when binding to "::", which is not a VIP anyway.
		"ipv4_compat": ignore,
	})
}

// TCP proxy.
var (
	tcpProxyPolicy = newPolicy("TcpProxy", &tcpproxyv3.TcpProxy{}, map[protoreflect.Name]rule{
		"cluster":                            honour,
		"weighted_clusters":                  honour,
		"stat_prefix":                        ignore,
		"access_log":                         ignore,
		"access_log_options":                 ignore,
		"access_log_flush_interval":          ignore,
		"flush_access_log_on_connected":      ignore,
		"idle_timeout":                       ignore,
		"downstream_idle_timeout":            ignore,
		"upstream_idle_timeout":              ignore,
		"max_connect_attempts":               ignore,
		"backoff_options":                    ignore,
		"check_drain_close":                  ignore,
		"hash_policy":                        refuse("hash-based backend choice is not supported; Sluice chooses by weighted random"),
		"metadata_match":                     refuse(reasonSubsets),
		"on_demand":                          refuse("on-demand cluster discovery is not supported"),
		"tunneling_config":                   refuse("tunneling is not supported"),
		"max_downstream_connection_duration": refuse(reasonNoProxy),
		"max_downstream_connection_duration_jitter_percentage": refuse(reasonNoProxy),
		"proxy_protocol_tlvs":             refuse("PROXY protocol is not supported"),
		"proxy_protocol_tlv_merge_policy": refuse("PROXY protocol is not supported"),
		"upstream_connect_mode":           refuse("the client connects to the backend itself, immediately"),
		"max_early_data_bytes":            refuse("the client connects to the backend itself, immediately"),
	})
	weightedClusterPolicy = newPolicy("TcpProxy.weighted_clusters", &tcpproxyv3.TcpProxy_WeightedCluster{}, map[protoreflect.Name]rule{
		"clusters": honour,
	})
	clusterWeightPolicy = newPolicy("TcpProxy.weighted_clusters.clusters", &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{}, map[protoreflect.Name]rule{
		"name":           honour,
		"weight":         honour,
		"metadata_match": refuse(reasonSubsets),
	})
)

// UDP proxy.
var (
	udpProxyPolicy = newPolicy("UdpProxyConfig", &udpproxyv3.UdpProxyConfig{}, map[protoreflect.Name]rule{
		"cluster":                       honour,
		"matcher":                       honour,
		"stat_prefix":                   ignore,
		"idle_timeout":                  ignore,
		"access_log":                    ignore,
		"proxy_access_log":              ignore,
		"access_log_options":            ignore,
		"hash_policies":                 refuse("hash-based backend choice is not supported; Sluice chooses by weighted random"),
		"use_per_packet_load_balancing": refuse("per-packet load balancing is not supported; Sluice chooses a backend per socket"),
		"use_original_src_ip":           refuse(reasonNoProxy),
		"session_filters":               refuse(reasonNoProxy),
		"tunneling_config":              refuse("tunneling is not supported"),
		"upstream_socket_config":        refuse(reasonNoProxy),
	})
	udpMatcherPolicy = newPolicy("UdpProxyConfig.matcher", &matcherv3.Matcher{}, map[protoreflect.Name]rule{
		"on_no_match":  honour,
		"matcher_list": refuse("only on_no_match is supported; " + reasonConnectTime),
		"matcher_tree": refuse("only on_no_match is supported; " + reasonConnectTime),
	})
	udpOnMatchPolicy = newPolicy("UdpProxyConfig.matcher.on_no_match", &matcherv3.Matcher_OnMatch{}, map[protoreflect.Name]rule{
		"action":  honour,
		"matcher": refuse("nested matchers are not supported; " + reasonConnectTime),
	})
	udpActionPolicy = newPolicy("UdpProxyConfig.matcher.on_no_match.action", &xdscorev3.TypedExtensionConfig{}, map[protoreflect.Name]rule{
		"name":         honour,
		"typed_config": honour,
	})
	udpRoutePolicy = newPolicy("Route", &udpproxyv3.Route{}, map[protoreflect.Name]rule{
		"cluster": honour,
	})
)

// Network RBAC: an L4 authorization policy on a TCP service. Nothing in it is
// ignored: a part of a policy Sluice does not enforce would let through what
// the control plane meant to block.
const (
	reasonCEL      = "CEL conditions are not supported; Sluice refuses a policy it cannot enforce"
	reasonMetadata = "metadata matching is not supported; Sluice decides at connect time and has no request metadata"
)

// reasonL7 is why an L4 policy cannot match on what, which only HTTP has.
func reasonL7(what string) string { return what + " matching is L7; not supported on an L4 policy" }

var (
	rbacFilterPolicy = newPolicy("RBAC", &rbacv3.RBAC{}, map[protoreflect.Name]rule{
		"rules":            honour,
		"shadow_rules":     honour,
		"stat_prefix":      honour, // the policy's name
		"enforcement_type": honour,
		// The model has one name per policy, for enforced and shadow rules
		// alike; a second prefix would only rename counters.
		"shadow_rules_stat_prefix": ignore,
		"matcher":                  refuse("the matcher API is not supported for RBAC; use rules"),
		"shadow_matcher":           refuse("the matcher API is not supported for RBAC; use shadow_rules"),
		"delay_deny":               refuse("delaying a denial is not supported; Sluice refuses a denied connection when it connects"),
	})
	rbacRulesPolicy = newPolicy("RBAC.rules", &rbacconfigv3.RBAC{}, map[protoreflect.Name]rule{
		"action":                honour,
		"policies":              honour,
		"audit_logging_options": refuse("audit logging is not supported"),
	})
	rbacRulePolicy = newPolicy("RBAC.rules.policies", &rbacconfigv3.Policy{}, map[protoreflect.Name]rule{
		"permissions":       honour,
		"principals":        honour,
		"condition":         refuse(reasonCEL),
		"checked_condition": refuse(reasonCEL),
		"cel_config":        refuse(reasonCEL),
	})
	rbacPermissionPolicy = newPolicy("RBAC.rules.policies.permissions", &rbacconfigv3.Permission{}, map[protoreflect.Name]rule{
		"any":                    honour,
		"destination_port":       honour,
		"destination_port_range": honour,
		"destination_ip":         honour,
		"and_rules":              honour,
		"or_rules":               honour,
		"not_rule":               honour,
		"header":                 refuse(reasonL7("header")),
		"url_path":               refuse(reasonL7("URL path")),
		"uri_template":           refuse(reasonL7("URI template")),
		"requested_server_name":  refuse("server name (SNI) matching needs the TLS handshake; " + reasonConnectTime),
		"metadata":               refuse(reasonMetadata),
		"sourced_metadata":       refuse(reasonMetadata),
		"matcher":                refuse("custom permission matchers are not supported"),
	})
	rbacPermissionSetPolicy = newPolicy("RBAC.rules.policies.permissions.rules", &rbacconfigv3.Permission_Set{}, map[protoreflect.Name]rule{
		"rules": honour,
	})
	rbacPrincipalPolicy = newPolicy("RBAC.rules.policies.principals", &rbacconfigv3.Principal{}, map[protoreflect.Name]rule{
		"any":              honour,
		"authenticated":    honour,
		"source_ip":        honour,
		"direct_remote_ip": honour,
		"remote_ip":        honour,
		"and_ids":          honour,
		"or_ids":           honour,
		"not_id":           honour,
		"header":           refuse(reasonL7("header")),
		"url_path":         refuse(reasonL7("URL path")),
		"metadata":         refuse(reasonMetadata),
		"sourced_metadata": refuse(reasonMetadata),
		"filter_state":     refuse("filter state matching is not supported; Sluice has no filter state"),
		"custom":           refuse("custom principal extensions are not supported"),
	})
	rbacPrincipalSetPolicy = newPolicy("RBAC.rules.policies.principals.ids", &rbacconfigv3.Principal_Set{}, map[protoreflect.Name]rule{
		"ids": honour,
	})
	rbacAuthenticatedPolicy = newPolicy("RBAC.rules.policies.principals.authenticated", &rbacconfigv3.Principal_Authenticated{}, map[protoreflect.Name]rule{
		"principal_name": honour,
	})
	rbacStringMatcherPolicy = newPolicy("RBAC.rules.policies.principals.authenticated.principal_name", &stringmatcherv3.StringMatcher{}, map[protoreflect.Name]rule{
		"exact":       honour,
		"prefix":      honour,
		"suffix":      honour,
		"contains":    honour,
		"ignore_case": honour,
		"safe_regex":  refuse("regular expressions are not supported"),
		"custom":      refuse("custom string matchers are not supported"),
	})

	// rbacNameMatchers are the policies of an authenticated principal's
	// name, which has no header matchers and refuses regexes.
	rbacNameMatchers = &matchers{what: "an RBAC principal", str: rbacStringMatcherPolicy}

	rbacCIDRPolicy = newPolicy("RBAC.rules.policies.cidr", &corev3.CidrRange{}, map[protoreflect.Name]rule{
		"address_prefix": honour,
		"prefix_len":     honour,
	})
	rbacPortRangePolicy = newPolicy("RBAC.rules.policies.permissions.destination_port_range", &typev3.Int32Range{}, map[protoreflect.Name]rule{
		"start": honour,
		"end":   honour,
	})
)

// Cluster.
var (
	clusterPolicy = newPolicy("Cluster", &clusterv3.Cluster{}, map[protoreflect.Name]rule{
		"name":                              honour,
		"type":                              honour,
		"eds_cluster_config":                honour,
		"lb_policy":                         honour,
		"load_assignment":                   honour,
		"cluster_type":                      refuse("custom cluster types are not supported; use EDS or STATIC"),
		"lb_subset_config":                  refuse("load balancer subsets are not supported"),
		"load_balancing_policy":             refuse("load balancing policy extensions are not supported; use lb_policy"),
		"original_dst_lb_config":            refuse("ORIGINAL_DST clusters are not supported"),
		"transport_socket":                  refuse(reasonTLSOrig),
		"transport_socket_matches":          refuse(reasonTLSOrig),
		"transport_socket_matcher":          refuse(reasonTLSOrig),
		"upstream_bind_config":              refuse("binding upstream connections to a source address is not supported"),
		"upstream_config":                   refuse("custom upstreams are not supported"),
		"filters":                           refuse("upstream network filters are not supported"),
		"alt_stat_name":                     ignore,
		"stats_matcher":                     ignore,
		"connect_timeout":                   ignore,
		"per_connection_buffer_limit_bytes": ignore,
		"per_connection_buffer_high_watermark_timeout": ignore,
		"health_checks":                             ignore,
		"max_requests_per_connection":               ignore,
		"circuit_breakers":                          ignore,
		"upstream_http_protocol_options":            ignore,
		"common_http_protocol_options":              ignore,
		"http_protocol_options":                     honour, // the L7 proxy's upstream protocol (cluster.go)
		"http2_protocol_options":                    honour,
		"typed_extension_protocol_options":          honour,
		"dns_refresh_rate":                          ignore,
		"dns_jitter":                                ignore,
		"dns_failure_refresh_rate":                  ignore,
		"respect_dns_ttl":                           ignore,
		"dns_lookup_family":                         ignore,
		"dns_resolvers":                             ignore,
		"use_tcp_for_dns_lookups":                   ignore,
		"dns_resolution_config":                     ignore,
		"typed_dns_resolver_config":                 ignore,
		"wait_for_warm_on_init":                     ignore,
		"outlier_detection":                         ignore,
		"cleanup_interval":                          ignore,
		"ring_hash_lb_config":                       ignore,
		"maglev_lb_config":                          ignore,
		"least_request_lb_config":                   ignore,
		"round_robin_lb_config":                     ignore,
		"common_lb_config":                          ignore,
		"metadata":                                  ignore,
		"protocol_selection":                        honour,
		"upstream_connection_options":               ignore,
		"close_connections_on_host_health_failure":  ignore,
		"ignore_health_on_host_removal":             ignore,
		"lrs_server":                                ignore,
		"lrs_report_endpoint_metrics":               ignore,
		"track_timeout_budgets":                     ignore,
		"track_cluster_stats":                       ignore,
		"preconnect_policy":                         ignore,
		"connection_pool_per_downstream_connection": ignore,
	})
	// The HTTP protocol options of a cluster (its typed_extension_protocol_options
	// entry envoy.extensions.upstreams.http.v3.HttpProtocolOptions) say
	// which HTTP version the L7 proxy speaks upstream; L4 services never
	// read them. What tunes a codec or a connection pool is ignored.
	httpProtocolOptionsPolicy = newPolicy("HttpProtocolOptions", &httpupstreamv3.HttpProtocolOptions{}, map[protoreflect.Name]rule{
		"explicit_http_config":           honour,
		"use_downstream_protocol_config": honour,
		"auto_config": refuse("choosing HTTP/1.1 or HTTP/2 by ALPN needs TLS to the upstream, which Sluice does not originate; " +
			"use explicit_http_config or use_downstream_protocol_config"),
		"common_http_protocol_options":   ignore,
		"upstream_http_protocol_options": ignore, // SNI and SAN checks of TLS origination, which is refused anyway
		"outlier_detection":              ignore,
		"hash_policy":                    ignore, // hash-based choice is approximated by weighted random
		"http_filters":                   refuse("upstream HTTP filters are not supported"),
		"header_validation_config":       refuse("header validation extensions are not supported"),
		"request_mirror_policies":        refuse("request mirroring is not supported"),
		"retry_policy":                   refuse("a cluster's retry policy is not supported; set retry_policy on the route or its virtual host"),
	})
	explicitHTTPConfigPolicy = newPolicy("HttpProtocolOptions.explicit_http_config", &httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig{}, map[protoreflect.Name]rule{
		"http_protocol_options":  honour,
		"http2_protocol_options": honour,
		"http3_protocol_options": refuse("HTTP/3 is not supported; use http_protocol_options (HTTP/1.1) or http2_protocol_options (cleartext HTTP/2)"),
	})
	downstreamHTTPConfigPolicy = newPolicy("HttpProtocolOptions.use_downstream_protocol_config", &httpupstreamv3.HttpProtocolOptions_UseDownstreamHttpConfig{}, map[protoreflect.Name]rule{
		"http_protocol_options":  honour,
		"http2_protocol_options": honour,
		// Only an HTTP/3 client would use them, and the L7 proxy serves none.
		"http3_protocol_options": ignore,
	})
	http1OptionsPolicy        = upstreamHTTP1Policy("HttpProtocolOptions.http_protocol_options")
	http2OptionsPolicy        = upstreamHTTP2Policy("HttpProtocolOptions.http2_protocol_options")
	clusterHTTP1OptionsPolicy = upstreamHTTP1Policy("Cluster.http_protocol_options")
	clusterHTTP2OptionsPolicy = upstreamHTTP2Policy("Cluster.http2_protocol_options")

	edsClusterConfigPolicy = newPolicy("Cluster.eds_cluster_config", &clusterv3.Cluster_EdsClusterConfig{}, map[protoreflect.Name]rule{
		"eds_config":   honour,
		"service_name": honour,
	})
	edsConfigSourcePolicy = configSourcePolicy("Cluster.eds_cluster_config.eds_config")
	// adsPolicy is the policy of AggregatedConfigSource, which has no
	// fields: its key is never shown.
	adsPolicy = newPolicy("ConfigSource.ads", &corev3.AggregatedConfigSource{}, nil)
)

// upstreamHTTP1Policy is the policy of a cluster's HTTP/1.1 options.
// What is about parsing (leniency, HTTP/1.0, absolute URLs and upgrades
// received) is ignored; so is header_key_format, as header names are
// case-insensitive (the proxy sends them in Go's canonical form), and
// enable_trailers, as the proxy passes the trailers of chunked messages on
// either way.
func upstreamHTTP1Policy(key string) *policy {
	return newPolicy(key, &corev3.Http1ProtocolOptions{}, map[protoreflect.Name]rule{
		"send_fully_qualified_url":                      refuse("sending absolute URLs upstream is not supported; requests go with their path only"),
		"enable_trailers":                               ignore,
		"header_key_format":                             ignore,
		"allow_absolute_url":                            ignore,
		"accept_http_10":                                ignore,
		"default_host_for_http_10":                      ignore,
		"allow_custom_methods":                          ignore,
		"ignore_http_11_upgrade":                        ignore,
		"allow_chunked_length":                          ignore,
		"override_stream_error_on_invalid_http_message": ignore,
		"use_balsa_parser":                              ignore,
	})
}

// upstreamHTTP2Policy is the policy of a cluster's HTTP/2 options:
// settings, flow control, limits and keepalives are ignored.
func upstreamHTTP2Policy(key string) *policy {
	return newPolicy(key, &corev3.Http2ProtocolOptions{}, map[protoreflect.Name]rule{
		"allow_connect": refuse("turning HTTP/1.1 upgrades into extended CONNECT is not supported; " +
			"upgrades go to the cluster over HTTP/1.1"),
		"allow_metadata":                                       refuse("METADATA frames are not supported"),
		"max_metadata_size":                                    ignore,
		"hpack_table_size":                                     ignore,
		"max_concurrent_streams":                               ignore,
		"initial_stream_window_size":                           ignore,
		"initial_connection_window_size":                       ignore,
		"max_outbound_frames":                                  ignore,
		"max_outbound_control_frames":                          ignore,
		"max_consecutive_inbound_frames_with_empty_payload":    ignore,
		"max_inbound_priority_frames_per_stream":               ignore,
		"max_inbound_window_update_frames_per_data_frame_sent": ignore,
		"stream_error_on_invalid_http_messaging":               ignore,
		"override_stream_error_on_invalid_http_message":        ignore,
		"custom_settings_parameters":                           ignore,
		"connection_keepalive":                                 ignore,
		"use_oghttp2_codec":                                    ignore,
		"enable_huffman_encoding":                              ignore,
		"max_header_field_size_kb":                             ignore,
		"disallow_obs_text":                                    ignore,
		"stream_reset_burst":                                   ignore,
		"stream_reset_rate":                                    ignore,
	})
}

// configSourcePolicy is the policy of a ConfigSource: only ADS.
func configSourcePolicy(key string) *policy {
	return newPolicy(key, &corev3.ConfigSource{}, map[protoreflect.Name]rule{
		"ads":                   honour,
		"resource_api_version":  honour,
		"initial_fetch_timeout": ignore,
		"authorities":           refuse(reasonOnlyADS),
		"path":                  refuse(reasonOnlyADS),
		"path_config_source":    refuse(reasonOnlyADS),
		"api_config_source":     refuse(reasonOnlyADS),
		"self":                  refuse(reasonOnlyADS),
	})
}

// ClusterLoadAssignment.
var (
	assignmentPolicy = newPolicy("ClusterLoadAssignment", &endpointv3.ClusterLoadAssignment{}, map[protoreflect.Name]rule{
		"cluster_name":    honour,
		"endpoints":       honour,
		"policy":          honour,
		"named_endpoints": refuse("named endpoints are not supported"),
	})
	assignmentPolicyPolicy = newPolicy("ClusterLoadAssignment.policy", &endpointv3.ClusterLoadAssignment_Policy{}, map[protoreflect.Name]rule{
		"drop_overloads":           refuse("drop overloads are not supported; Sluice does not shed load"),
		"overprovisioning_factor":  ignore,
		"endpoint_stale_after":     ignore,
		"weighted_priority_health": ignore,
	})
	localityEndpointsPolicy = newPolicy("LocalityLbEndpoints", &endpointv3.LocalityLbEndpoints{}, map[protoreflect.Name]rule{
		"locality":                     honour,
		"lb_endpoints":                 honour,
		"priority":                     honour,
		"load_balancing_weight":        ignore, // locality weighting is not done
		"metadata":                     ignore,
		"proximity":                    ignore,
		"leds_cluster_locality_config": refuse("LEDS is not supported; list lb_endpoints"),
		"load_balancer_endpoints":      refuse("deprecated; list lb_endpoints"),
	})
	localityPolicy = newPolicy("LocalityLbEndpoints.locality", &corev3.Locality{}, map[protoreflect.Name]rule{
		"region":   honour,
		"zone":     honour,
		"sub_zone": honour,
	})
	lbEndpointPolicy = newPolicy("LbEndpoint", &endpointv3.LbEndpoint{}, map[protoreflect.Name]rule{
		"endpoint":              honour,
		"health_status":         honour,
		"load_balancing_weight": honour,
		"metadata":              honour,
		"endpoint_name":         refuse("named endpoints are not supported; give the endpoint inline"),
	}).withClean(5, func(m proto.Message) bool {
		e, ok := m.(*endpointv3.LbEndpoint)
		if !ok {
			return false
		}
		_, named := e.HostIdentifier.(*endpointv3.LbEndpoint_EndpointName)
		return !named
	})
	endpointPolicy = newPolicy("LbEndpoint.endpoint", &endpointv3.Endpoint{}, map[protoreflect.Name]rule{
		"address":              honour,
		"hostname":             ignore,
		"health_check_config":  ignore,
		"additional_addresses": ignore,
		"observability_name":   ignore,
	}).withClean(5, func(m proto.Message) bool {
		e, ok := m.(*endpointv3.Endpoint)
		return ok && e.HealthCheckConfig == nil && e.Hostname == "" && len(e.AdditionalAddresses) == 0 && e.ObservabilityName == ""
	})
	endpointAddressPolicy = addressPolicy("LbEndpoint.endpoint.address")
	endpointSocketPolicy  = newPolicy("LbEndpoint.endpoint.address.socket_address", &corev3.SocketAddress{}, map[protoreflect.Name]rule{
		"address":                    honour,
		"port_value":                 honour,
		"named_port":                 refuse("named ports are not supported; use port_value"),
		"resolver_name":              refuse("custom resolvers are not supported; the address must be an IP literal"),
		"network_namespace_filepath": refuse("network namespaces are not supported"),
		// The service's protocol is the listener's; an endpoint's is unused.
		"protocol":    ignore,
		"ipv4_compat": ignore,
	}).withClean(7, func(m proto.Message) bool {
		sa, ok := m.(*corev3.SocketAddress)
		if !ok {
			return false
		}
		_, named := sa.PortSpecifier.(*corev3.SocketAddress_NamedPort)
		return !named && sa.Protocol == 0 && sa.ResolverName == "" && !sa.Ipv4Compat && sa.NetworkNamespaceFilepath == ""
	})
	listenerMetadataPolicy = newPolicy("Listener.metadata", &corev3.Metadata{}, map[protoreflect.Name]rule{
		"filter_metadata":       honour,
		"typed_filter_metadata": ignore,
	})
	endpointMetadataPolicy = newPolicy("LbEndpoint.metadata", &corev3.Metadata{}, map[protoreflect.Name]rule{
		"filter_metadata":       honour,
		"typed_filter_metadata": ignore,
	})
)
