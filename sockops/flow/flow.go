// Package flow defines Sluice's flow record, the agent's bounded store of
// recent flows with live subscriptions, the filters `sluice observe`
// offers, and the ways a flow is printed.
package flow

import (
	"net/netip"
	"time"
)

// Event says what happened to a connection.
type Event string

// Flow events.
const (
	EventOpen      Event = "open"      // the connection was established
	EventClose     Event = "close"     // the connection closed; bytes, duration, RTT are final
	EventDeny      Event = "deny"      // policy refused the connection (or, in dry-run, would have)
	EventTerminate Event = "terminate" // a connection that policy now denies was destroyed
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
	Reason      string        `json:"reason,omitempty"` // why a deny or audit happened, e.g. "policy"
	Policy      string        `json:"policy,omitempty"` // the rule that decided: "<policy>#<rule>"
	Protocol    string        `json:"protocol"`         // "tcp"
	Source      Peer          `json:"source"`
	Service     *Service      `json:"service,omitempty"` // nil when the client dialed a workload directly
	Destination Peer          `json:"destination"`       // the chosen backend
	BytesSent   uint64        `json:"bytes_sent"`        // source → destination
	BytesRecv   uint64        `json:"bytes_received"`    // destination → source
	Duration    time.Duration `json:"duration_ns"`       // open to close
	RTT         time.Duration `json:"rtt_ns"`            // smoothed round-trip time at close
	Retransmits uint32        `json:"retransmits"`
	FastPath    bool          `json:"fast_path"` // the same-node fast path carried its bytes
}
