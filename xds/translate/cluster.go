package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// clusterPlan is where a cluster's endpoints come from.
type clusterPlan struct {
	eds    string           // EDS: the ClusterLoadAssignment name
	static []model.Endpoint // STATIC: the inline load_assignment
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
