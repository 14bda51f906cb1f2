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
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is one policy event of the node's programs.
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
}

// RuleStat is the verdicts one rule decided: at connect on this node's
// clients, and at the destination on this node's servers. For a dry-run
// rule, they are what it would have decided.
type RuleStat struct {
	Rule                      policy.Rule
	AllowConnect, DenyConnect uint64
	AllowIngress, DenyIngress uint64
}
