package flow

import (
	"fmt"
	"strconv"
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
	// Event is the flow's event: "request" selects the L7 proxy's
	// request records.
	Event Event
	// HTTPMethod is a request's method, in any case ("get" matches GET).
	// Flows without a request do not match it.
	HTTPMethod string
	// HTTPCode is a request's response code, "404", or a class of them,
	// "5xx" (CheckHTTPCode). Flows without a request do not match it.
	HTTPCode string
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
	case fl.Event != "" && f.Event != fl.Event:
		return false
	case fl.HTTPMethod != "" && (f.HTTP == nil || !strings.EqualFold(f.HTTP.Method, fl.HTTPMethod)):
		return false
	case fl.HTTPCode != "" && (f.HTTP == nil || !matchCode(fl.HTTPCode, f.HTTP.Code)):
		return false
	}
	return true
}

// matchCode matches a code by want, a code or a class ("5xx") that
// CheckHTTPCode accepted; it does not allocate.
func matchCode(want string, code int) bool {
	if len(want) == 3 && want[1:] == "xx" {
		return code/100 == int(want[0]-'0')
	}
	n, err := strconv.Atoi(want)
	return err == nil && n == code
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

// ParseEvent returns the event named s.
func ParseEvent(s string) (Event, error) {
	switch e := Event(s); e {
	case EventOpen, EventClose, EventDeny, EventTerminate, EventRequest:
		return e, nil
	}
	return "", fmt.Errorf("unknown event %q: want open, close, deny, terminate or request", s)
}

// CheckHTTPCode checks a response code filter: a code, 100 to 599 (or
// 0, a request the proxy recorded no response of), or a class of codes,
// 1xx to 5xx.
func CheckHTTPCode(s string) error {
	if len(s) == 3 && s[1:] == "xx" && s[0] >= '1' && s[0] <= '5' {
		return nil
	}
	if n, err := strconv.Atoi(s); err == nil && (n == 0 || n >= 100 && n <= 599) && strconv.Itoa(n) == s {
		return nil
	}
	return fmt.Errorf("response code %q: want a code (404) or a class of codes (1xx to 5xx)", s)
}

// CheckHTTPMethod checks a method filter: an HTTP token (GET, POST, ...).
func CheckHTTPMethod(s string) error {
	if s == "" || len(s) > 32 {
		return fmt.Errorf("method %q: want an HTTP method such as GET or POST", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return fmt.Errorf("method %q: want an HTTP method such as GET or POST", s)
		}
	}
	return nil
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
