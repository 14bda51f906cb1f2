package cluster

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/xds/mesh"
)

// Mesh describes a mesh file (docs/config.md, "Mesh file") in Go: the
// services of the simulated cluster with their VIPs, ports, endpoints and
// policies, and the workloads its pods run. Field names and meanings are the
// file's; a zero field is left out of the file and takes the file's default.
type Mesh struct {
	TrustDomain string     `yaml:"trustDomain,omitempty"`
	Workloads   []Workload `yaml:"workloads,omitempty"`
	Services    []Service  `yaml:"services,omitempty"`
}

// Workload places a workload on a node: its cgroup and addresses
// (Pod.Workload fills them in from a pod).
type Workload struct {
	Name           string       `yaml:"name"`
	Namespace      string       `yaml:"namespace"`
	ServiceAccount string       `yaml:"serviceAccount"`
	Node           string       `yaml:"node,omitempty"`
	Cgroup         string       `yaml:"cgroup"`
	IPs            []netip.Addr `yaml:"ips,omitempty"`
	FastPath       *bool        `yaml:"fastPath,omitempty"`
}

// Service is a set of VIPs and ports clients dial and the endpoints behind
// them.
type Service struct {
	Name      string       `yaml:"name"`
	Namespace string       `yaml:"namespace,omitempty"`
	VIPs      []netip.Addr `yaml:"vips"`
	Ports     []Port       `yaml:"ports"`
	Endpoints []Endpoint   `yaml:"endpoints,omitempty"`
	Policies  []Policy     `yaml:"policies,omitempty"`
	FastPath  *bool        `yaml:"fastPath,omitempty"`
}

// Port is a port of a service.
type Port struct {
	Port       uint16 `yaml:"port"`
	Protocol   string `yaml:"protocol,omitempty"`   // TCP (default) or UDP
	TargetPort uint16 `yaml:"targetPort,omitempty"` // default: Port
}

// Endpoint is a backend of a service. Who runs at Address comes from the
// mesh's workloads.
type Endpoint struct {
	Address  netip.Addr `yaml:"address"`
	Weight   uint32     `yaml:"weight,omitempty"`
	Health   string     `yaml:"health,omitempty"` // healthy (default), unhealthy, draining or unknown
	Priority uint32     `yaml:"priority,omitempty"`
}

// Policy authorizes connections to a service's TCP ports.
type Policy struct {
	Name       string `yaml:"name"`
	Action     string `yaml:"action,omitempty"` // ALLOW (default), DENY or AUDIT
	DryRun     bool   `yaml:"dryRun,omitempty"`
	Continuous bool   `yaml:"continuous,omitempty"`
	Rules      []Rule `yaml:"rules,omitempty"`
}

// Rule matches connections from one of its sources to one of its ports.
type Rule struct {
	Name  string   `yaml:"name"`
	From  []Source `yaml:"from,omitempty"`
	Ports []uint16 `yaml:"ports,omitempty"`
}

// Source matches a connection's source when every field set matches.
type Source struct {
	Principals         []string `yaml:"principals,omitempty"`
	Namespaces         []string `yaml:"namespaces,omitempty"`
	ServiceAccounts    []string `yaml:"serviceAccounts,omitempty"`
	IPBlocks           []string `yaml:"ipBlocks,omitempty"`
	NotPrincipals      []string `yaml:"notPrincipals,omitempty"`
	NotNamespaces      []string `yaml:"notNamespaces,omitempty"`
	NotServiceAccounts []string `yaml:"notServiceAccounts,omitempty"`
	NotIPBlocks        []string `yaml:"notIpBlocks,omitempty"`
}

// Service returns the service namespace/name, or nil. An empty namespace
// matches a service that names none.
func (m *Mesh) Service(namespace, name string) *Service {
	for i := range m.Services {
		if s := &m.Services[i]; s.Name == name && s.Namespace == namespace {
			return s
		}
	}
	return nil
}

// Endpoint returns the endpoint at addr, or nil.
func (s *Service) Endpoint(addr netip.Addr) *Endpoint {
	for i := range s.Endpoints {
		if e := &s.Endpoints[i]; e.Address == addr {
			return e
		}
	}
	return nil
}

// RemoveEndpoint removes the endpoint at addr.
func (s *Service) RemoveEndpoint(addr netip.Addr) error {
	i := slices.IndexFunc(s.Endpoints, func(e Endpoint) bool { return e.Address == addr })
	if i < 0 {
		return fmt.Errorf("service %s/%s has no endpoint %s", s.Namespace, s.Name, addr)
	}
	s.Endpoints = slices.Delete(s.Endpoints, i, i+1)
	return nil
}

// Marshal renders m as a mesh file and checks it the way the control plane
// will, so that a mistake is reported here, naming the field, rather than
// in an agent's log.
func (m *Mesh) Marshal() ([]byte, error) { return m.marshal("mesh") }

// marshal renders and checks m; errors name the file as name.
func (m *Mesh) marshal(name string) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("render mesh file: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render mesh file: %w", err)
	}
	if _, err := mesh.Parse(name, buf.Bytes()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// clone returns a deep copy of m, by way of its YAML form.
func (m *Mesh) clone() (Mesh, error) {
	data, err := yaml.Marshal(m)
	if err != nil {
		return Mesh{}, fmt.Errorf("copy mesh: %w", err)
	}
	var c Mesh
	if err := yaml.Unmarshal(data, &c); err != nil {
		return Mesh{}, fmt.Errorf("copy mesh: %w", err)
	}
	return c, nil
}

// MeshFile is a mesh file on disk, written from a Mesh, that agents and
// control planes follow. Its methods may be called from several
// goroutines.
type MeshFile struct {
	Path string

	mu   sync.Mutex // guards mesh and serializes writes
	mesh Mesh       // what the file holds
}

// WriteMesh renders m to path and returns the file. An invalid mesh is an
// error, and nothing is written.
func WriteMesh(path string, m Mesh) (*MeshFile, error) {
	c, err := m.clone()
	if err != nil {
		return nil, err
	}
	f := &MeshFile{Path: path, mesh: c}
	if err := f.write(&f.mesh); err != nil {
		return nil, err
	}
	return f, nil
}

// Mesh returns a copy of what the file holds.
func (f *MeshFile) Mesh() (Mesh, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mesh.clone()
}

// Update applies edit to a copy of the mesh and writes the result in place
// of the file, by writing a new file and renaming it, as editors do. If edit
// fails or the result is not a valid mesh, the file is left as it was and
// the error returned. Agents take the edit up at their next check of the file
// (--config-poll).
func (f *MeshFile) Update(edit func(*Mesh) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	next, err := f.mesh.clone()
	if err != nil {
		return err
	}
	if err := edit(&next); err != nil {
		return fmt.Errorf("edit %s: %w", f.Path, err)
	}
	if err := f.write(&next); err != nil {
		return err
	}
	f.mesh = next
	return nil
}

func (f *MeshFile) write(m *Mesh) error {
	data, err := m.marshal(f.Path)
	if err != nil {
		return err
	}
	return writeFileAtomic(f.Path, data)
}

// writeFileAtomic writes data to a new file beside path and renames it to
// path, so a reader sees the old content or the new, never a mix.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}
