// Package mesh reads the mesh file that feeds Sluice's embedded control plane
// and renders it as Envoy v3 xDS resources.
//
// The file format is described in docs/config.md, section "Mesh file".
package mesh

import (
	"errors"
	"net/netip"
	"strconv"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/yamlfile"
)

// DefaultTrustDomain is the SPIFFE trust domain of a mesh file that does not
// name one, as in Kubernetes clusters.
const DefaultTrustDomain = "cluster.local"

// DefaultNamespace is the namespace of a service that does not name one.
const DefaultNamespace = "default"

// DefaultServiceAccount is the service account of a workload that does not
// name one, as in Kubernetes.
const DefaultServiceAccount = "default"

// Mesh is a validated mesh file: the services of a mesh, their VIPs, ports
// and endpoints. Parse builds it; a Mesh is not modified afterwards, so it can
// be shared between goroutines.
type Mesh struct {
	// TrustDomain is the SPIFFE trust domain of every workload.
	TrustDomain string
	// Services are in file order.
	Services []Service
	// Workloads are the workloads the file places on nodes, with their
	// cgroups: an agent fed from the file identifies its own workloads'
	// connections with them. In file order; nil if none.
	Workloads []identity.Workload
}

// Service is a set of VIPs and ports and the endpoints behind them. Every
// (VIP, port) pair is a service address clients dial.
type Service struct {
	Name      string       // a DNS-1123 label
	Namespace string       // a DNS-1123 label
	VIPs      []netip.Addr // one or two, at most one per address family; the first is the listener's address
	Ports     []Port       // at least one
	Endpoints []Endpoint   // may be empty: connections are then refused
	// Policies authorize connections to the service's TCP ports; a
	// connection must pass every one. In file order; nil if none.
	Policies []Policy
	// FastPath is the service's setting of the same-node fast path for
	// its TCP ports (docs/fastpath.md).
	FastPath model.FastPath
}

// Port is one port of a service.
type Port struct {
	Port       uint16         // what clients dial
	Protocol   model.Protocol // model.TCP or model.UDP
	TargetPort uint16         // the endpoints' port
}

// Endpoint is one backend of a service. It serves every port of the service,
// each on the port's TargetPort.
type Endpoint struct {
	Address  netip.Addr // the family of one of the service's VIPs
	Weight   uint32     // 1..1000000
	Health   model.Health
	Priority uint32 // 0 is the highest priority
	Locality model.Locality
	// Workload, if not nil, describes who runs at Address. Its SPIFFEID is
	// derived from the mesh's trust domain, its namespace and service account.
	Workload *model.Workload
}

// Policy is an L4 authorization policy of a service, rendered as an RBAC
// network filter on each of the service's TCP listeners.
type Policy struct {
	Name   string // a DNS-1123 label, unique within the service: the filter's stat_prefix
	Action Action
	// DryRun: the rules are evaluated and recorded, never enforced (RBAC
	// shadow_rules). Never set with ActionAudit.
	DryRun bool
	// Continuous: a connection the policy comes to deny after an edit is
	// terminated (RBAC enforcement_type CONTINUOUS). Never set with
	// ActionAudit.
	Continuous bool
	Rules      []Rule // nil if none: an ActionAllow policy then denies every connection
}

// Action is what a policy does with the connections its rules match.
type Action uint8

// Policy actions.
const (
	ActionAllow Action = iota // a connection no rule matches is denied
	ActionDeny                // a connection a rule matches is denied
	ActionAudit               // matches are recorded, nothing is denied (RBAC action LOG)
)

func (a Action) String() string {
	switch a {
	case ActionDeny:
		return "DENY"
	case ActionAudit:
		return "AUDIT"
	}
	return "ALLOW"
}

// Rule matches a connection from one of its sources to one of its ports.
type Rule struct {
	Name  string   // a DNS-1123 label, unique within the policy
	From  []Source // nil: every source, mesh workload or not
	Ports []uint16 // TCP ports of the service (Port.Port); nil: all of them
}

// Source matches a connection's source when every field that is set
// matches: a positive field when one of its values matches, a Not field
// when none of its values does. At least one field is set.
type Source struct {
	Principals      []string         // SPIFFE IDs, matched exactly; AnyPrincipal matches every mesh workload
	Namespaces      []string         // every mesh workload of the mesh's trust domain in these namespaces
	ServiceAccounts []ServiceAccount // the mesh workloads of the mesh's trust domain running as these
	IPBlocks        []netip.Prefix   // source addresses, masked

	NotPrincipals      []string
	NotNamespaces      []string
	NotServiceAccounts []ServiceAccount
	NotIPBlocks        []netip.Prefix
}

// AnyPrincipal, as a Source's principal, matches every source with a mesh
// identity, of any trust domain.
const AnyPrincipal = "*"

// ServiceAccount names a Kubernetes service account.
type ServiceAccount struct {
	Namespace string // a DNS-1123 label
	Name      string // a DNS-1123 subdomain
}

func (sa ServiceAccount) String() string { return sa.Namespace + "/" + sa.Name }

// ResourceName returns the name of the listener, cluster and cluster load
// assignment rendered for port p of s: "<namespace>/<name>:<port>" for TCP
// and "<namespace>/<name>:<port>/udp" for UDP.
func (s *Service) ResourceName(p Port) string {
	n := s.Namespace + "/" + s.Name + ":" + strconv.Itoa(int(p.Port))
	if p.Protocol == model.UDP {
		n += "/udp"
	}
	return n
}

// SPIFFEID returns the SPIFFE ID of a workload running as serviceAccount in
// namespace within trustDomain.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// ErrInvalid is the class of every error Parse returns: the file is not a
// valid mesh file. Test for it with errors.Is.
var ErrInvalid = errors.New("invalid mesh file")

// Error is a problem found in a mesh file. It names the place in the file so
// that the file's author can find it; File is the file name given to Parse,
// Field a path such as "services[0].endpoints[1].address", and Class is
// ErrInvalid, making errors.Is(err, ErrInvalid) true.
type Error = yamlfile.Error
