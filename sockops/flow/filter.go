package flow

import (
	"fmt"
	"strings"
	"time"
)

// Filter selects flows. Every field that is set must match; the zero
// Filter matches every flow. A Filter is a value: Match does not change
// it, and one Filter may be used from many goroutines.
type Filter struct {
	// FromWorkload is the source workload: "name", or "namespace/name".
	FromWorkload string
	// ToWorkload is the destination workload: "name", or "namespace/name".
	ToWorkload string
	// Namespace matches flows whose source or destination is in it.
	Namespace string
	// ToService is the name of the service the client dialed:
	// "namespace/name", or the name alone for that name in any namespace.
	ToService string
	// FromIdentity is the source's SPIFFE ID, or a prefix of it followed
	// by "*" (spiffe://td/ns/shop/*).
	FromIdentity string
	Verdict      Verdict
	// Port is the destination backend's port or the service VIP's port.
	Port uint16
	// Since drops flows whose Time is before it.
	Since time.Time
}

// Match reports whether fl selects f.
func (fl Filter) Match(f Flow) bool {
	switch {
	case fl.FromWorkload != "" && !matchWorkload(fl.FromWorkload, f.Source):
		return false
	case fl.ToWorkload != "" && !matchWorkload(fl.ToWorkload, f.Destination):
		return false
	case fl.Namespace != "" && f.Source.Namespace != fl.Namespace && f.Destination.Namespace != fl.Namespace:
		return false
	case fl.ToService != "" && (f.Service == nil || !matchService(fl.ToService, f.Service.Name)):
		return false
	case fl.FromIdentity != "" && !matchIdentity(fl.FromIdentity, f.Source.Identity):
		return false
	case fl.Verdict != "" && f.Verdict != fl.Verdict:
		return false
	case fl.Port != 0 && f.Destination.Address.Port() != fl.Port && (f.Service == nil || f.Service.VIP.Port() != fl.Port):
		return false
	case !fl.Since.IsZero() && f.Time.Before(fl.Since):
		return false
	}
	return true
}

func matchWorkload(want string, p Peer) bool {
	if ns, name, ok := strings.Cut(want, "/"); ok {
		return p.Namespace == ns && p.Workload == name
	}
	return p.Workload == want
}

// matchService matches a service named "namespace/name" by that or by
// its name alone.
func matchService(want, name string) bool {
	if strings.Contains(want, "/") {
		return name == want
	}
	return name == want || strings.HasSuffix(name, "/"+want)
}

func matchIdentity(want, id string) bool {
	if prefix, ok := strings.CutSuffix(want, "*"); ok {
		return strings.HasPrefix(id, prefix)
	}
	return id == want
}

// ParseVerdict returns the verdict named s.
func ParseVerdict(s string) (Verdict, error) {
	switch v := Verdict(s); v {
	case VerdictAllowed, VerdictDenied, VerdictAudit:
		return v, nil
	}
	return "", fmt.Errorf("unknown verdict %q: want allowed, denied or audit", s)
}

// CheckWorkload checks a workload filter: "name" or "namespace/name".
func CheckWorkload(s string) error {
	ns, name, qualified := strings.Cut(s, "/")
	if s == "" || (qualified && (ns == "" || name == "" || strings.Contains(name, "/"))) {
		return fmt.Errorf("workload %q: want name or namespace/name", s)
	}
	return nil
}

// CheckIdentity checks an identity filter: a SPIFFE ID, or a prefix of one
// followed by "*".
func CheckIdentity(s string) error {
	if !strings.HasPrefix(s, "spiffe://") {
		return fmt.Errorf("identity %q: want a SPIFFE ID (spiffe://trust-domain/path), optionally ending in * to match a prefix", s)
	}
	if i := strings.IndexByte(s, '*'); i >= 0 && i != len(s)-1 {
		return fmt.Errorf("identity %q: * may only end it, to match a prefix", s)
	}
	return nil
}
