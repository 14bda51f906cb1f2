package translate

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// clusterPlan is where a cluster's endpoints come from, and how the L7
// proxy speaks to them.
type clusterPlan struct {
	eds      string           // EDS: the ClusterLoadAssignment name
	static   []model.Endpoint // STATIC: the inline load_assignment
	protocol model.UpstreamProtocol
}

// lbPolicyKeys are the Ignored keys of the accepted lb_policy values.
// Sluice chooses every backend by weighted random at connect time; the other
// policies are approximated by it, and counted so the operator can see it.
// RANDOM is exactly what Sluice does and is not counted.
var lbPolicyKeys = map[clusterv3.Cluster_LbPolicy]string{
	clusterv3.Cluster_ROUND_ROBIN:   "Cluster.lb_policy=ROUND_ROBIN",
	clusterv3.Cluster_LEAST_REQUEST: "Cluster.lb_policy=LEAST_REQUEST",
	clusterv3.Cluster_RING_HASH:     "Cluster.lb_policy=RING_HASH",
	clusterv3.Cluster_MAGLEV:        "Cluster.lb_policy=MAGLEV",
	clusterv3.Cluster_RANDOM:        "",
}

func (t *tally) cluster(name string, c *clusterv3.Cluster) (clusterPlan, *fieldError) {
	if c == nil {
		return clusterPlan{}, errAt("", "nil resource")
	}
	if err := t.check(c.ProtoReflect(), clusterPolicy); err != nil {
		return clusterPlan{}, err
	}
	if err := nameMatches(c.GetName(), name); err != nil {
		return clusterPlan{}, err
	}
	plan, err := t.clusterEndpoints(name, c)
	if err != nil {
		return clusterPlan{}, err
	}
	if plan.protocol, err = t.upstreamProtocol(c); err != nil {
		return clusterPlan{}, err
	}
	return plan, nil
}

// clusterEndpoints returns where c's endpoints come from.
func (t *tally) clusterEndpoints(name string, c *clusterv3.Cluster) (clusterPlan, *fieldError) {
	key, ok := lbPolicyKeys[c.GetLbPolicy()]
	if !ok {
		return clusterPlan{}, errAt("lb_policy", "%s is not supported; use ROUND_ROBIN, RANDOM, LEAST_REQUEST, RING_HASH or MAGLEV (all approximated by weighted random)", c.GetLbPolicy())
	}
	if key != "" {
		// Counted even when unset: ROUND_ROBIN is then the policy in force.
		t.add(key)
	}
	// GetType is STATIC when unset, as in Envoy; cluster_type is refused by
	// the policy above.
	switch typ := c.GetType(); typ {
	case clusterv3.Cluster_EDS:
		svc, err := t.edsConfig(name, c.GetEdsClusterConfig())
		if err != nil {
			return clusterPlan{}, err.in("eds_cluster_config")
		}
		if err := directoryCluster(name, svc); err != nil {
			return clusterPlan{}, err
		}
		if c.GetLoadAssignment() != nil {
			// Envoy does not read it for an EDS cluster either.
			t.add("Cluster.load_assignment")
		}
		return clusterPlan{eds: svc}, nil
	case clusterv3.Cluster_STATIC:
		if IsDirectory(name) {
			return clusterPlan{}, errAt("type", "STATIC: a workload directory cluster (%s…) must be EDS", Directory)
		}
		if c.GetEdsClusterConfig() != nil {
			// Most likely "type: EDS" was forgotten; Envoy would silently
			// serve an empty cluster.
			return clusterPlan{}, errAt("eds_cluster_config", "set on a STATIC cluster; did you mean type: EDS?")
		}
		if c.GetLoadAssignment() == nil {
			return clusterPlan{}, nil
		}
		eps, err := t.assignment(name, c.GetLoadAssignment())
		if err != nil {
			return clusterPlan{}, err.in("load_assignment")
		}
		return clusterPlan{static: eps}, nil
	case clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		return clusterPlan{}, errAt("type", "%s clusters are not supported; Sluice needs IP endpoints (use EDS or STATIC)", typ)
	case clusterv3.Cluster_ORIGINAL_DST:
		return clusterPlan{}, errAt("type", "ORIGINAL_DST clusters are not supported; use EDS or STATIC")
	default:
		return clusterPlan{}, errAt("type", "unknown cluster type %d; use EDS or STATIC", int32(typ))
	}
}

// edsConfig returns the assignment name of an EDS cluster. Errors are
// relative to eds_cluster_config.
func (t *tally) edsConfig(cluster string, eds *clusterv3.Cluster_EdsClusterConfig) (string, *fieldError) {
	if err := t.check(eds.ProtoReflect(), edsClusterConfigPolicy); err != nil {
		return "", err
	}
	if src := eds.GetEdsConfig(); src != nil {
		if err := t.configSource(src, edsConfigSourcePolicy); err != nil {
			return "", err.in("eds_config")
		}
	}
	return edsName(cluster, eds), nil
}

// edsName is the name of the ClusterLoadAssignment an EDS cluster reads.
func edsName(cluster string, eds *clusterv3.Cluster_EdsClusterConfig) string {
	if n := eds.GetServiceName(); n != "" {
		return n
	}
	return cluster
}

// configSource accepts only ADS: the agent has one xDS stream, and the
// resources it translates all arrive on it. p is the policy of src's place.
func (t *tally) configSource(src *corev3.ConfigSource, p *policy) *fieldError {
	if err := t.check(src.ProtoReflect(), p); err != nil {
		return err
	}
	ads := src.GetAds()
	if ads == nil {
		return errAt("", "%s; set ads: {}", reasonOnlyADS)
	}
	if err := t.check(ads.ProtoReflect(), adsPolicy); err != nil {
		return err.in("ads")
	}
	switch v := src.GetResourceApiVersion(); v {
	case corev3.ApiVersion_AUTO, corev3.ApiVersion_V3:
	default:
		return errAt("resource_api_version", "%s is not supported; use V3", v)
	}
	return nil
}

// typeHTTPProtocolOptions is the type of a cluster's HTTP protocol
// options, and the key of typed_extension_protocol_options Envoy finds
// them under (it finds an extension's options by key only).
const typeHTTPProtocolOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// keyOtherProtocolOptions counts the clusters with protocol options of
// other extensions (TCP, Thrift, ...), which only filters Sluice does not
// run would read.
const keyOtherProtocolOptions = "Cluster.typed_extension_protocol_options"

// upstreamProtocol returns the HTTP version the L7 proxy speaks to c's
// endpoints, as Envoy chooses it: by the HttpProtocolOptions in
// typed_extension_protocol_options, or else by the deprecated fields
// http2_protocol_options and protocol_selection; HTTP/1.1 when neither
// says. L4 services never read it.
func (t *tally) upstreamProtocol(c *clusterv3.Cluster) (model.UpstreamProtocol, *fieldError) {
	var opts *anypb.Any
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		if key == typeHTTPProtocolOptions {
			opts = a
		} else {
			t.add(keyOtherProtocolOptions)
		}
	}
	if opts != nil {
		at := fmt.Sprintf("typed_extension_protocol_options[%q]", typeHTTPProtocolOptions)
		if typ := typeName(opts); typ != typeHTTPProtocolOptions {
			return 0, errAt(at, "type %s; want %s", typeLabel(typ), typeHTTPProtocolOptions)
		}
		o := &httpupstreamv3.HttpProtocolOptions{}
		if err := unpack(opts, o); err != nil {
			return 0, err.in(at)
		}
		p, err := t.httpProtocolOptions(o)
		if err != nil {
			return 0, err.in(at)
		}
		// As in Envoy, they make the deprecated fields moot.
		if c.GetHttpProtocolOptions() != nil {
			t.add("Cluster.http_protocol_options")
		}
		if c.GetHttp2ProtocolOptions() != nil {
			t.add("Cluster.http2_protocol_options")
		}
		if c.GetProtocolSelection() != clusterv3.Cluster_USE_CONFIGURED_PROTOCOL {
			t.add("Cluster.protocol_selection")
		}
		return p, nil
	}

	if o := c.GetHttpProtocolOptions(); o != nil {
		if err := t.check(o.ProtoReflect(), clusterHTTP1OptionsPolicy); err != nil {
			return 0, err.in("http_protocol_options")
		}
	}
	if o := c.GetHttp2ProtocolOptions(); o != nil {
		if err := t.check(o.ProtoReflect(), clusterHTTP2OptionsPolicy); err != nil {
			return 0, err.in("http2_protocol_options")
		}
	}
	switch sel := c.GetProtocolSelection(); sel {
	case clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL:
		return model.UpstreamUseDownstream, nil
	case clusterv3.Cluster_USE_CONFIGURED_PROTOCOL:
	default:
		return 0, errAt("protocol_selection", "unknown value %d; use USE_CONFIGURED_PROTOCOL or USE_DOWNSTREAM_PROTOCOL", int32(sel))
	}
	switch {
	case c.GetHttp2ProtocolOptions() != nil && c.GetHttpProtocolOptions() != nil:
		return 0, errAt("http2_protocol_options", "set together with http_protocol_options, which takes protocol_selection: USE_DOWNSTREAM_PROTOCOL (as in Envoy)")
	case c.GetHttp2ProtocolOptions() != nil:
		return model.UpstreamHTTP2, nil
	}
	return model.UpstreamHTTP1, nil
}

// httpProtocolOptions returns the upstream protocol o says. Errors are
// relative to o.
func (t *tally) httpProtocolOptions(o *httpupstreamv3.HttpProtocolOptions) (model.UpstreamProtocol, *fieldError) {
	if err := t.check(o.ProtoReflect(), httpProtocolOptionsPolicy); err != nil {
		return 0, err
	}
	switch u := o.GetUpstreamProtocolOptions().(type) {
	case *httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_:
		e := u.ExplicitHttpConfig
		if err := t.check(e.ProtoReflect(), explicitHTTPConfigPolicy); err != nil {
			return 0, err.in("explicit_http_config")
		}
		switch pc := e.GetProtocolConfig().(type) {
		case *httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions:
			if err := t.check(pc.HttpProtocolOptions.ProtoReflect(), http1OptionsPolicy); err != nil {
				return 0, err.in("explicit_http_config.http_protocol_options")
			}
			return model.UpstreamHTTP1, nil
		case *httpupstreamv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions:
			if err := t.check(pc.Http2ProtocolOptions.ProtoReflect(), http2OptionsPolicy); err != nil {
				return 0, err.in("explicit_http_config.http2_protocol_options")
			}
			return model.UpstreamHTTP2, nil
		}
		// http3_protocol_options is refused by the policy.
		return 0, errAt("explicit_http_config", "no protocol; set http_protocol_options (HTTP/1.1) or http2_protocol_options (cleartext HTTP/2)")
	case *httpupstreamv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
		d := u.UseDownstreamProtocolConfig
		if err := t.check(d.ProtoReflect(), downstreamHTTPConfigPolicy); err != nil {
			return 0, err.in("use_downstream_protocol_config")
		}
		if err := t.check(d.GetHttpProtocolOptions().ProtoReflect(), http1OptionsPolicy); err != nil {
			return 0, err.in("use_downstream_protocol_config.http_protocol_options")
		}
		if err := t.check(d.GetHttp2ProtocolOptions().ProtoReflect(), http2OptionsPolicy); err != nil {
			return 0, err.in("use_downstream_protocol_config.http2_protocol_options")
		}
		return model.UpstreamUseDownstream, nil
	}
	// auto_config is refused by the policy.
	return 0, errAt("", "no upstream protocol; set explicit_http_config or use_downstream_protocol_config")
}
