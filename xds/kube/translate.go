package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

const (
	tcp = model.TCP
	udp = model.UDP
)

// Translation is what a Kubernetes Service translates to.
type Translation struct {
	// Service is what is served; nil when the Service is skipped whole.
	Service *mesh.Service
	// Skipped says why the Service is not served at all ("" if it is).
	Skipped string
	// Notes are the parts of a served Service that are not (node ports,
	// load balancers, SCTP ports), each a sentence; nil if none.
	Notes []string
	// Pods are the pods the Service's endpoints refer to, as
	// "namespace/name", sorted; whether found or not.
	Pods []string
}

// Reason returns Skipped and Notes as one line, "" if there is nothing to
// report.
func (t *Translation) Reason() string {
	parts := t.Notes
	if t.Skipped != "" {
		parts = append([]string{t.Skipped}, parts...)
	}
	return strings.Join(parts, "; ")
}

// PodLookup returns the pod namespace/name, or nil if it is not known.
type PodLookup func(namespace, name string) *corev1.Pod

// Translate translates Service svc with its EndpointSlices, the pods they
// refer to (found with pods) and the valid policies of its namespace that
// cover it (applied in the order given) into a mesh.Service. It is pure: it
// neither modifies its arguments nor keeps them.
//
// A Service Sluice cannot serve — headless, ExternalName, without a cluster
// IP, or whose ports cannot be resolved consistently — is skipped whole,
// with the reason in Skipped. Only the ClusterIP part of a NodePort or
// LoadBalancer Service is served, and SCTP ports are left out; Notes says
// so.
func Translate(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, pods PodLookup, policies []*Policy, trustDomain string) Translation {
	var t Translation
	t.Pods = podRefs(eps)
	skip := func(format string, args ...any) Translation {
		t.Skipped = fmt.Sprintf(format, args...)
		t.Notes = nil
		return t
	}
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		return skip("ExternalName services are not served (no cluster IP to route)")
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		return skip("headless services are not served (clusterIP None: clients dial pod addresses directly)")
	case svc.Spec.ClusterIP == "":
		return skip("the service has no cluster IP")
	}
	s := &mesh.Service{Name: svc.Name, Namespace: svc.Namespace}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for i, ipStr := range ips {
		ip, err := netip.ParseAddr(ipStr)
		if err != nil || ip.Zone() != "" {
			return skip("spec.clusterIPs[%d]: %q is not an IP address", i, ipStr)
		}
		ip = ip.Unmap()
		if slices.ContainsFunc(s.VIPs, func(v netip.Addr) bool { return v.Is4() == ip.Is4() }) {
			return skip("spec.clusterIPs[%d]: a second %s address; at most one per family", i, family(ip))
		}
		s.VIPs = append(s.VIPs, ip)
	}

	switch svc.Spec.Type {
	case corev1.ServiceTypeNodePort:
		t.Notes = append(t.Notes, "type NodePort: only the cluster IP is served, not the node ports")
	case corev1.ServiceTypeLoadBalancer:
		t.Notes = append(t.Notes, "type LoadBalancer: only the cluster IP is served, not the node ports or load balancer addresses")
	}
	if len(svc.Spec.ExternalIPs) > 0 {
		t.Notes = append(t.Notes, "spec.externalIPs are not served")
	}

	for i, sp := range svc.Spec.Ports {
		path := fmt.Sprintf("spec.ports[%d]", i)
		var proto model.Protocol
		switch sp.Protocol {
		case corev1.ProtocolTCP, "":
			proto = tcp
		case corev1.ProtocolUDP:
			proto = udp
		default:
			t.Notes = append(t.Notes, fmt.Sprintf("%s: protocol %s is not served", path, sp.Protocol))
			continue
		}
		if sp.Port < 1 || sp.Port > 65535 {
			return skip("%s.port: %d is not a port", path, sp.Port)
		}
		target, err := targetPort(sp, eps)
		if err != nil {
			return skip("%s.targetPort: %v", path, err)
		}
		s.Ports = append(s.Ports, mesh.Port{Port: uint16(sp.Port), Protocol: proto, TargetPort: target})
	}
	if len(s.Ports) == 0 {
		return skip("no TCP or UDP port to serve")
	}
	s.Endpoints = endpoints(svc, eps, s.VIPs, pods, trustDomain)
	// A named target port no slice resolves is harmless while there is no
	// endpoint to send to: the listener refuses connections.
	for _, p := range s.Ports {
		if p.TargetPort == 0 && len(s.Endpoints) > 0 {
			return skip("a named targetPort of port %d is not resolved by the service's EndpointSlices", p.Port)
		}
	}
	for _, pol := range policies {
		s.Policies = append(s.Policies, pol.apply(s))
	}
	t.Service = s
	return t
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// targetPort returns the pods' port for service port sp: the number given,
// or a named port resolved through the EndpointSlices' ports, which are
// named after the service port. 0 if no slice resolves it. A named port
// that resolves to different numbers in different slices (pods that name
// different container ports alike) cannot be served as one port.
func targetPort(sp corev1.ServicePort, eps []*discoveryv1.EndpointSlice) (uint16, error) {
	if sp.TargetPort.StrVal == "" && sp.TargetPort.IntVal == 0 {
		return uint16(sp.Port), nil
	}
	if sp.TargetPort.Type == intstr.Int {
		if sp.TargetPort.IntVal < 1 || sp.TargetPort.IntVal > 65535 {
			return 0, fmt.Errorf("%d is not a port", sp.TargetPort.IntVal)
		}
		return uint16(sp.TargetPort.IntVal), nil
	}
	var found uint16
	for _, sl := range eps {
		if sl.AddressType == discoveryv1.AddressTypeFQDN || len(sl.Endpoints) == 0 {
			continue
		}
		for _, p := range sl.Ports {
			if p.Name == nil || *p.Name != sp.Name || p.Port == nil {
				continue
			}
			if p.Protocol != nil && *p.Protocol != cmp.Or(sp.Protocol, corev1.ProtocolTCP) {
				continue
			}
			n := *p.Port
			if n < 1 || n > 65535 {
				return 0, fmt.Errorf("%q resolves to %d in EndpointSlice %s, not a port", sp.TargetPort.StrVal, n, sl.Name)
			}
			if found != 0 && found != uint16(n) {
				return 0, fmt.Errorf("%q resolves to both %d and %d (pods name different ports alike); Sluice serves one target port per service port", sp.TargetPort.StrVal, found, n)
			}
			found = uint16(n)
		}
	}
	return found, nil
}

// endpoints collects the endpoints of the slices whose addresses have the
// family of one of vips. An address in several slices (a pod moving between
// slices) is kept once, with its best health.
func endpoints(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, vips []netip.Addr, pods PodLookup, trustDomain string) []mesh.Endpoint {
	var has4, has6 bool
	for _, v := range vips {
		has4 = has4 || v.Is4()
		has6 = has6 || v.Is6()
	}
	byAddr := map[netip.Addr]int{}
	var out []mesh.Endpoint
	for _, sl := range eps {
		switch sl.AddressType {
		case discoveryv1.AddressTypeIPv4:
			if !has4 {
				continue
			}
		case discoveryv1.AddressTypeIPv6:
			if !has6 {
				continue
			}
		default:
			continue
		}
		for i := range sl.Endpoints {
			e := &sl.Endpoints[i]
			ep := mesh.Endpoint{Weight: 1, Health: health(e.Conditions)}
			if e.Zone != nil {
				ep.Locality.Zone = *e.Zone
			}
			ep.Workload = workload(svc.Namespace, e, pods, trustDomain)
			for _, a := range e.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil || addr.Zone() != "" {
					continue
				}
				addr = addr.Unmap()
				if addr.Is4() != (sl.AddressType == discoveryv1.AddressTypeIPv4) {
					continue
				}
				ep.Address = addr
				if j, ok := byAddr[addr]; ok {
					if rank(ep.Health) > rank(out[j].Health) {
						out[j] = ep
					}
					continue
				}
				byAddr[addr] = len(out)
				out = append(out, ep)
			}
		}
	}
	return out
}

// health maps EndpointSlice conditions: ready (or unknown, which consumers
// are told to read as ready) is healthy, serving while terminating is
// draining, anything else unhealthy.
func health(c discoveryv1.EndpointConditions) model.Health {
	switch {
	case c.Ready == nil || *c.Ready:
		return model.HealthHealthy
	case c.Serving != nil && *c.Serving && c.Terminating != nil && *c.Terminating:
		return model.HealthDraining
	}
	return model.HealthUnhealthy
}

func rank(h model.Health) int {
	switch h {
	case model.HealthHealthy:
		return 3
	case model.HealthDraining:
		return 2
	case model.HealthUnhealthy:
		return 1
	}
	return 0
}

// workload describes the pod an endpoint refers to, nil if it refers to no
// pod or to one not known (yet).
func workload(namespace string, e *discoveryv1.Endpoint, pods PodLookup, trustDomain string) *model.Workload {
	ref := e.TargetRef
	if ref == nil || ref.Kind != "Pod" || pods == nil {
		return nil
	}
	ns := cmp.Or(ref.Namespace, namespace)
	pod := pods(ns, ref.Name)
	if pod == nil {
		return nil
	}
	sa := cmp.Or(pod.Spec.ServiceAccountName, mesh.DefaultServiceAccount)
	node := pod.Spec.NodeName
	if node == "" && e.NodeName != nil {
		node = *e.NodeName
	}
	return &model.Workload{
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		ServiceAccount: sa,
		Node:           node,
		SPIFFEID:       mesh.SPIFFEID(trustDomain, pod.Namespace, sa),
	}
}

// podRefs lists the pods the slices' endpoints refer to.
func podRefs(eps []*discoveryv1.EndpointSlice) []string {
	var out []string
	for _, sl := range eps {
		for i := range sl.Endpoints {
			if ref := sl.Endpoints[i].TargetRef; ref != nil && ref.Kind == "Pod" {
				out = append(out, cmp.Or(ref.Namespace, sl.Namespace)+"/"+ref.Name)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
