package demo

import (
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// The story the demo tells uses these workloads and services of its mesh
// file by name.
const (
	allowedClient = "frontend"  // calls web and dns; web's policy admits it
	deniedClient  = "batch"     // web's policy refuses it
	drained       = "backend-b" // the live edit drains it...
	revived       = "backend-c" // ...and makes this one healthy
	webName       = "demo/web"
	dnsName       = "demo/dns"
)

// cast is who plays in the demo: the pods the mesh file's workloads
// section describes, on their nodes, and the two services of the story.
type cast struct {
	nodes []string  // node names, in the order the workloads name them
	pods  []podSpec // in file order
	web   *mesh.Service
	dns   *mesh.Service
	// The service ports the story uses, and the addresses clients dial.
	webPort, dnsPort mesh.Port
	webVIP, dnsVIP   netip.AddrPort
}

// podSpec is one pod: a workload of the file, and what it serves.
type podSpec struct {
	name, node     string
	serviceAccount string
	ip             netip.Addr
	http, udp      uint16 // the port it serves HTTP on (for web), UDP on (for dns); 0 for none
}

func (c *cast) pod(name string) *podSpec {
	for i := range c.pods {
		if c.pods[i].name == name {
			return &c.pods[i]
		}
	}
	return nil
}

func (c *cast) podAt(ip netip.Addr) *podSpec {
	for i := range c.pods {
		if c.pods[i].ip == ip {
			return &c.pods[i]
		}
	}
	return nil
}

// readCast reads the mesh file at path and the cast it describes. It
// refuses a file that lacks what the demo's story needs, naming what.
func readCast(path string) (*cast, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := mesh.Parse(path, data)
	if err != nil {
		return nil, err
	}
	return castOf(m)
}

func castOf(m *mesh.Mesh) (*cast, error) {
	c := &cast{}
	for _, w := range m.Workloads {
		if w.Node == "" {
			return nil, fmt.Errorf("workload %s has no node: the demo places every pod on a node", w.Name)
		}
		i := slices.IndexFunc(w.Addrs, netip.Addr.Is4)
		if i < 0 {
			return nil, fmt.Errorf("workload %s has no IPv4 address in ips: the demo's pods are IPv4", w.Name)
		}
		if c.pod(w.Name) != nil {
			return nil, fmt.Errorf("two workloads are named %s: the demo makes one pod of each name", w.Name)
		}
		c.pods = append(c.pods, podSpec{name: w.Name, node: w.Node, serviceAccount: w.ServiceAccount, ip: w.Addrs[i]})
		if !slices.Contains(c.nodes, w.Node) {
			c.nodes = append(c.nodes, w.Node)
		}
	}
	for _, name := range []string{allowedClient, deniedClient, drained, revived} {
		if c.pod(name) == nil {
			return nil, fmt.Errorf("no workload %s: the demo's story uses it", name)
		}
	}
	if c.pod(allowedClient).node != c.pod(deniedClient).node {
		return nil, fmt.Errorf("workloads %s and %s are on different nodes: the demo observes both on one node", allowedClient, deniedClient)
	}
	for i := range m.Services {
		s := &m.Services[i]
		switch s.Namespace + "/" + s.Name {
		case webName:
			c.web = s
		case dnsName:
			c.dns = s
		}
	}
	var err error
	if c.webPort, err = servicePort(c.web, webName, model.TCP); err != nil {
		return nil, err
	}
	if c.dnsPort, err = servicePort(c.dns, dnsName, model.UDP); err != nil {
		return nil, err
	}
	if c.webVIP, err = vip4(c.web, webName, c.webPort); err != nil {
		return nil, err
	}
	if c.dnsVIP, err = vip4(c.dns, dnsName, c.dnsPort); err != nil {
		return nil, err
	}
	if len(c.web.Policies) == 0 {
		return nil, fmt.Errorf("service %s has no policy: the demo shows one refusing %s", webName, deniedClient)
	}
	for _, ep := range c.web.Endpoints {
		p := c.podAt(ep.Address)
		if p == nil {
			return nil, fmt.Errorf("endpoint %s of %s is no workload's address: the demo runs servers only in the workloads' pods", ep.Address, webName)
		}
		p.http = c.webPort.TargetPort
	}
	for _, ep := range c.dns.Endpoints {
		p := c.podAt(ep.Address)
		if p == nil {
			return nil, fmt.Errorf("endpoint %s of %s is no workload's address: the demo runs servers only in the workloads' pods", ep.Address, dnsName)
		}
		p.udp = c.dnsPort.TargetPort
	}
	for _, name := range []string{drained, revived} {
		if c.pod(name).http == 0 {
			return nil, fmt.Errorf("workload %s is no endpoint of %s: the demo's live edit changes it", name, webName)
		}
	}
	return c, nil
}

// servicePort returns the first port of s with protocol p.
func servicePort(s *mesh.Service, name string, p model.Protocol) (mesh.Port, error) {
	if s == nil {
		return mesh.Port{}, fmt.Errorf("no service %s: the demo's story uses it", name)
	}
	for _, port := range s.Ports {
		if port.Protocol == p {
			return port, nil
		}
	}
	return mesh.Port{}, fmt.Errorf("service %s has no %s port: the demo's story uses one", name, p)
}

// vip4 returns the IPv4 VIP of s with port p.
func vip4(s *mesh.Service, name string, p mesh.Port) (netip.AddrPort, error) {
	i := slices.IndexFunc(s.VIPs, netip.Addr.Is4)
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("service %s has no IPv4 VIP: the demo's pods are IPv4", name)
	}
	return netip.AddrPortFrom(s.VIPs[i], p.Port), nil
}
