package dataplane

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/policy"
)

// EventKind says what a policy event reports.
type EventKind uint8

// Policy event kinds.
const (
	EventDenyConnect       EventKind = 1 // a local client was refused at connect (EPERM)
	EventDenyIngress       EventKind = 2 // a connection was denied at its destination on this node
	EventShadowDenyConnect EventKind = 3 // dry-run rules would have refused a local client
	EventShadowDenyIngress EventKind = 4 // dry-run rules would have denied a connection here
	EventTerminated        EventKind = 5 // a denied connection was destroyed
	EventOpen              EventKind = 6 // a flow was established (with SetFlows on)
	EventClose             EventKind = 7 // a flow closed (with SetFlows on)
)

func (k EventKind) String() string {
	switch k {
	case EventDenyConnect:
		return "deny-connect"
	case EventDenyIngress:
		return "deny-ingress"
	case EventShadowDenyConnect:
		return "shadow-deny-connect"
	case EventShadowDenyIngress:
		return "shadow-deny-ingress"
	case EventTerminated:
		return "terminated"
	case EventOpen:
		return "open"
	case EventClose:
		return "close"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is one event of the node's programs: a policy event, or a flow's
// open or close.
type Event struct {
	Kind        EventKind
	Time        time.Duration  // CLOCK_MONOTONIC
	Cookie      uint64         // socket cookie; 0 for EventTerminated
	Netns       uint64         // network namespace cookie; 0 for EventTerminated
	Source      netip.AddrPort // port 0 at connect, when the client is not bound yet
	Destination netip.AddrPort // the policy destination: the backend or the local address
	Identity    uint32         // the source's identity; 0 is unknown
	SPIFFEID    string         // the source's SPIFFE ID, "" if unknown
	Rule        policy.Rule    // the rule that decided (zero if none)
	ShadowRule  policy.Rule    // the dry-run rule that decided (zero if none)
	Deny        bool           // the enforced verdict
	ShadowDeny  bool           // the dry-run verdict was deny

	// Flow events (EventOpen, EventClose). Source is the client's end at
	// both ends of a connection.
	Server      bool           // the socket is the server's (accepted here); else the client's
	Service     netip.AddrPort // the service VIP:port the client dialed; invalid if unknown
	BytesSent   uint64         // payload client → server, at close
	BytesRecv   uint64         // payload server → client, at close
	Duration    time.Duration  // established to closed, at close
	RTT         time.Duration  // smoothed round-trip time
	Retransmits uint32         // segments retransmitted
	FastPath    bool           // the socket was on the same-node fast path
}

// RuleStat is the verdicts one rule decided: at connect on this node's
// clients, and at the destination on this node's servers. For a dry-run
// rule, they are what it would have decided.
type RuleStat struct {
	Rule                      policy.Rule
	AllowConnect, DenyConnect uint64
	AllowIngress, DenyIngress uint64
}
