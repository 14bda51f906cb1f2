package model

import (
	"fmt"
	"regexp"
	"time"
)

// HTTPRoutes is how an L7 service's requests are routed: the translation
// of an xDS RouteConfiguration (docs/l7.md). A request takes the virtual
// host whose domain matches its authority most closely (exact, then the
// longest "*" suffix, then the longest "*" prefix, then "*"), then that
// host's first route whose match holds.
type HTTPRoutes struct {
	Name         string // the RouteConfiguration's name
	VirtualHosts []VirtualHost
	IgnorePort   bool // match a request's authority without its port
}

// VirtualHost is a set of routes served for some authorities.
type VirtualHost struct {
	Name string
	// Domains are lower-case: "example.com" (exact, also with a port),
	// "*.example.com" (suffix), "example.*" (prefix) or "*" (any). A host
	// with "*" is the default.
	Domains []string
	Routes  []HTTPRoute
}

// HTTPRoute is one route: a match and what to do with what matches.
type HTTPRoute struct {
	Name   string
	Match  HTTPMatch
	Action HTTPAction
}

// PathKind says how HTTPMatch.Path compares with a request's path (without
// its query).
type PathKind uint8

// Path match kinds.
const (
	PathPrefix PathKind = iota // the path starts with Path ("" or "/" match every path)
	PathExact                  // the path is Path
	PathRegex                  // PathRegex matches the whole path
)

// HTTPMatch is a predicate on a request: its path, and every one of
// Headers and Query.
type HTTPMatch struct {
	PathKind      PathKind
	Path          string
	PathRegex     *regexp.Regexp // PathRegex: anchored at both ends
	CaseSensitive bool           // for PathPrefix and PathExact; true unless the route says otherwise
	Headers       []HeaderMatch
	Query         []QueryMatch
}

// HeaderMatch holds if the named header (lower-case) is present and its
// value matches Value — or, with Invert, if that is not so. With Present,
// presence alone is asked (with Invert, absence).
type HeaderMatch struct {
	Name    string
	Present bool
	Value   StringMatch // when not Present
	Invert  bool
}

// QueryMatch holds if the named query parameter is present and, unless
// Present, its (first) value matches Value.
type QueryMatch struct {
	Name    string
	Present bool
	Value   StringMatch
}

// HTTPAction is where a matched request goes and how.
type HTTPAction struct {
	// Clusters are the upstream pools with their weights; a request goes
	// to one of them with probability weight/sum. One cluster has weight 1.
	Clusters []WeightedCluster
	// Timeout bounds the whole request, retries included, from the end of
	// the request until the end of the response, as xDS's route timeout
	// does; 0 means none. xDS's default is 15 s.
	Timeout       time.Duration
	Retry         *RetryPolicy // nil: no retries
	PrefixRewrite string       // replaces the matched path prefix (PathPrefix routes only); "" keeps the path
	// AddHeaders are added to the request (appended, or replacing the
	// header's values unless Append); RemoveHeaders (lower-case) are removed
	// first.
	AddHeaders    []HeaderValue
	RemoveHeaders []string
}

// WeightedCluster is one upstream pool of an HTTPAction.
type WeightedCluster struct {
	Name   string // the xDS cluster
	Weight uint32
}

// RetryOn is a set of conditions under which a request is tried again.
type RetryOn uint8

// Retry conditions, as xDS's retry_on names them.
const (
	Retry5xx            RetryOn = 1 << iota // "5xx": a 5xx response, or no response at all (reset, connect failure, timeout of a try)
	RetryGatewayError                       // "gateway-error": 502, 503 or 504
	RetryReset                              // "reset": the upstream reset, disconnected or did not answer in time
	RetryConnectFailure                     // "connect-failure": the upstream connection could not be made
)

// RetryPolicy says when and how often a request is tried again.
type RetryPolicy struct {
	On            RetryOn
	NumRetries    uint32        // tries after the first
	PerTryTimeout time.Duration // 0: each try may take what is left of the route's Timeout
}

// HeaderValue is a header to add to a request.
type HeaderValue struct {
	Name   string // lower-case
	Value  string
	Append bool // add a value rather than replace the header's values
}

// L7 says how an L7 service — one whose xDS listener carries an
// http_connection_manager — is served: the kernel hands its connections to
// the node's L7 proxy, which authorizes and routes each request.
type L7 struct {
	// RouteConfig names the RouteConfiguration (RDS) the routes come from;
	// "" when the listener carries them inline.
	RouteConfig string
	Routes      *HTTPRoutes // required
	// Policies are the listener's HTTP RBAC filters (envoy.filters.http.rbac),
	// in filter order; a request must pass every one.
	Policies []Policy
	// Clusters are the upstream pools the routes name, each with its
	// endpoints (chosen by health and priority as for L4 services).
	Clusters []Cluster
}

// Cluster is an upstream pool of an L7 service.
type Cluster struct {
	Name      string
	Endpoints []Endpoint
	Protocol  UpstreamProtocol // how the L7 proxy speaks to the endpoints
}

// UpstreamProtocol is the HTTP version the L7 proxy speaks to a cluster's
// endpoints: xDS's HttpProtocolOptions of the cluster (docs/l7.md,
// Upstream protocol). An HTTP/1.1 upgrade (websocket, ...) goes over
// HTTP/1.1 whatever the cluster's protocol: HTTP/2 has no Upgrade.
type UpstreamProtocol uint8

// Upstream protocols.
const (
	// UpstreamHTTP1 is HTTP/1.1, Envoy's default when a cluster says
	// nothing; an HTTP/2 client's requests are converted.
	UpstreamHTTP1 UpstreamProtocol = iota
	// UpstreamHTTP2 is cleartext HTTP/2 with prior knowledge (h2c).
	UpstreamHTTP2
	// UpstreamUseDownstream is the client's protocol: HTTP/2 for an HTTP/2
	// client, HTTP/1.1 for the others (Envoy's use_downstream_protocol).
	UpstreamUseDownstream
)

func (p UpstreamProtocol) String() string {
	switch p {
	case UpstreamHTTP1:
		return "HTTP/1.1"
	case UpstreamHTTP2:
		return "HTTP/2"
	case UpstreamUseDownstream:
		return "the client's"
	}
	return fmt.Sprintf("UpstreamProtocol(%d)", uint8(p))
}
