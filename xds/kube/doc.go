// Package kube serves a Kubernetes cluster's Services to Sluice agents as
// Envoy v3 xDS (`sluice controlplane --kubernetes`).
//
// # What is served
//
// The Server watches core/v1 Services and Pods, discovery.k8s.io/v1
// EndpointSlices and sluice.io/v1alpha1 MeshPolicies with shared informers
// and serves what the mesh-file control plane would serve for the same
// services (package mesh renders both): for each TCP or UDP port of a
// Service, a listener on every cluster IP (IPv4 and IPv6), an EDS cluster
// and a cluster load assignment, all named "<namespace>/<name>:<port>"
// ("…/udp" for UDP). Every agent gets the same resources.
//
//   - Endpoints come from the Service's EndpointSlices (label
//     kubernetes.io/service-name): ready (or unknown) is HEALTHY, serving
//     while terminating is DRAINING, anything else UNHEALTHY; the
//     endpoint's zone is its locality's zone. An endpoint whose targetRef
//     is a known Pod carries the workload metadata "sluice.io/workload":
//     spiffe_id spiffe://<trust domain>/ns/<namespace>/sa/<service account
//     or "default">, namespace, service_account, workload (the pod name)
//     and node.
//   - A numeric targetPort is used as is; a named one is resolved through
//     the EndpointSlices' ports. A named port that resolves to different
//     numbers for different pods cannot be served as one port: the Service
//     is skipped.
//   - Headless Services (clusterIP None), ExternalName Services and
//     Services without a cluster IP are skipped whole. NodePort and
//     LoadBalancer Services are served for their cluster IPs only; SCTP
//     ports and externalIPs are left out. Each such Service is reported
//     once per change: a log line and a Warning Event with reason
//     "Unsupported" on the Service. A Service is never served in part
//     beyond that: one that cannot be translated whole is skipped whole.
//
// # MeshPolicy
//
// A MeshPolicy (manifests/meshpolicy-crd.yaml) covers the Services of its
// namespace whose non-empty spec.selector, taken as pod labels, matches its
// spec.selector; without a selector it covers every Service of its
// namespace. It becomes one RBAC network filter, named after the policy,
// on every TCP listener of each Service it covers, policies in name order.
// A rule's ports are pod ports: they select the Service ports whose
// targetPort they list; a rule with ports none of which the Service has is
// left out for that Service (an ALLOW policy left with no rule denies
// everything there, as in the mesh file).
//
// Every policy gets a status through the status subresource, written only
// when it changes: observedGeneration, condition Accepted (True, reason
// Accepted; or False, reason Invalid, with a message naming the field, as
// `spec.rules[0].from[1].ipBlocks[0]: "10.0.0.0/33" is not an address or
// CIDR`) and coveredServices, the "<namespace>/<name>" of the Services the
// served version applies to.
//
// An invalid policy is never applied in part. If this control plane
// process served a valid version of it before, the Services it covered
// keep that version (the status message says which generation); if not —
// the policy was invalid from the start, or the control plane restarted
// since — the Services are served without it. Keeping the last valid
// version means a typo in an edit does not open up, or shut off, a
// Service; a restart cannot recover a version the API server no longer
// holds.
//
// # Scale
//
// State keeps each Service's translation and rendering; an event marks only
// the Services it affects (a Service itself; an EndpointSlice its Service;
// a Pod the Services whose endpoints refer to it, and only when its service
// account or node changes; a MeshPolicy the Services it covers before and
// after), and changes are gathered for DefaultDebounce before being
// served. Resources are served from one go-control-plane LinearCache per
// type, which sends agents only what changed (delta ADS) or the changed
// type (state of the world). Assignments and clusters are updated before
// the listeners that use them, and listeners removed before their clusters
// and assignments.
//
// The Server serves nothing until its informers have listed the whole
// cluster, so a restarted control plane never hands agents an empty world.
package kube
