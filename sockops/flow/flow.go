// Package flow defines Sluice's flow record, the agent's bounded store of
// recent flows with live subscriptions, the filters `sluice observe`
// offers, and the ways a flow is printed.
package flow

import (
	"net/netip"
	"time"
)

// Event says what happened to a connection, or, for an L7 service, to a
// request.
type Event string

// Flow events.
const (
	EventOpen      Event = "open"      // the connection was established
	EventClose     Event = "close"     // the connection closed; bytes, duration, RTT are final
	EventDeny      Event = "deny"      // policy refused the connection (or, in dry-run, would have)
	EventTerminate Event = "terminate" // a connection that policy now denies was destroyed
	EventRequest   Event = "request"   // the L7 proxy finished a request; HTTP says what it was
)

// Verdict is the policy's decision on a flow.
type Verdict string

// Verdicts.
const (
	VerdictAllowed Verdict = "allowed"
	VerdictDenied  Verdict = "denied"
	VerdictAudit   Verdict = "audit" // allowed, but a dry-run rule would have denied it
)

// Reporter says which end of the connection the record describes, as
// Istio's reporter label does.
type Reporter string

// Reporters.
const (
	ReporterSource      Reporter = "source"      // the client's node saw it
	ReporterDestination Reporter = "destination" // the server's node saw it
	// ReporterProxy is the node's L7 proxy, on the client's node: it
	// reports requests (as Istio's waypoint reporter does in ambient mode).
	ReporterProxy Reporter = "proxy"
)

// Peer is one end of a flow. Fields the agent does not know are empty.
type Peer struct {
	Workload  string         `json:"workload,omitempty"`
	Namespace string         `json:"namespace,omitempty"`
	Identity  string         `json:"identity,omitempty"` // SPIFFE ID
	Address   netip.AddrPort `json:"address"`            // port 0 when not yet bound
}

// Service is the service the client dialed.
type Service struct {
	Name string         `json:"name"`
	VIP  netip.AddrPort `json:"vip"`
}

// Flow is one flow record. Its JSON form (one object per line in
// `sluice observe -o json`) is a stable interface: fields are added, never
// renamed or removed. Durations are in nanoseconds.
type Flow struct {
	Seq         uint64        `json:"seq"` // assigned by the Store, increasing
	Time        time.Time     `json:"time"`
	Node        string        `json:"node"`
	Event       Event         `json:"event"`
	Reporter    Reporter      `json:"reporter"`
	Verdict     Verdict       `json:"verdict"`
	Reason      string        `json:"reason,omitempty"` // why a deny or audit happened: "policy", a request's "http-policy"
	Policy      string        `json:"policy,omitempty"` // the rule that decided: "<policy>#<rule>"
	Protocol    string        `json:"protocol"`         // "tcp"; a request's "http" or "grpc"
	Source      Peer          `json:"source"`
	Service     *Service      `json:"service,omitempty"` // nil when the client dialed a workload directly
	Destination Peer          `json:"destination"`       // the chosen backend
	BytesSent   uint64        `json:"bytes_sent"`        // source → destination
	BytesRecv   uint64        `json:"bytes_received"`    // destination → source
	Duration    time.Duration `json:"duration_ns"`       // open to close; a request's latency
	RTT         time.Duration `json:"rtt_ns"`            // smoothed round-trip time at close
	Retransmits uint32        `json:"retransmits"`
	FastPath    bool          `json:"fast_path"`      // the same-node fast path carried its bytes
	HTTP        *HTTP         `json:"http,omitempty"` // set on request events only
}

// HTTP is what a request flow (EventRequest) says of its request. The
// flow's Source is the client, its Service the L7 service the client
// dialed, its Destination the endpoint of the last try (no address when
// none was tried), and its Duration the time from the request's start to
// the end of its response; its Time is when the response ended.
type HTTP struct {
	Method string `json:"method"`
	// Path is the client's, escaped, without the query string (which may
	// hold secrets and is not recorded), cut to 256 bytes (l7.MaxRecordText):
	// a record's size stays bounded whatever a client sends.
	Path          string `json:"path"`
	PathTruncated bool   `json:"path_truncated,omitempty"` // Path was longer
	Authority     string `json:"authority,omitempty"`      // the client's Host or :authority, cut likewise
	Protocol      string `json:"protocol"`                 // the client's: "HTTP/1.1", "HTTP/2.0"
	// Code is the response's status: the upstream's, or the proxy's own
	// answer (a gRPC client gets it as a grpc-status); 499 when the
	// client left before the response; 0 when the proxy recorded none.
	Code int `json:"code"`
	// GRPCStatus is the grpc-status a gRPC client got, a number from 0 to
	// 999 ("0" is OK); "" when it got none.
	GRPCStatus string `json:"grpc_status,omitempty"`
	Route      string `json:"route,omitempty"`   // the route taken
	Cluster    string `json:"cluster,omitempty"` // the cluster drawn
	Tries      int    `json:"tries,omitempty"`   // tries sent upstream: 1 + retries
	// Error says why the proxy answered itself or cut the response, cut
	// likewise.
	Error string `json:"error,omitempty"`
}
