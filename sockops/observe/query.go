package observe

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

// DefaultLast is how many flows GET /v1/flows returns when the query
// asks for neither last, since nor follow.
const DefaultLast = 100

// Query selects the flows Client.Flows asks the agent for. The zero Query
// asks for the last DefaultLast flows.
type Query struct {
	Last   int       // optional: at most the last Last matching flows
	Since  time.Time // optional: flows from this time on
	Follow bool      // optional: after the stored flows, stream new ones until ctx ends
	// Filter selects flows, stored and streamed; its Since combines with
	// the Query's (the later applies). Optional.
	Filter flow.Filter
}

// The query parameters of GET /v1/flows.
const (
	paramLast         = "last"
	paramSince        = "since"
	paramFollow       = "follow"
	paramFromWorkload = "from_workload"
	paramToWorkload   = "to_workload"
	paramNamespace    = "namespace"
	paramToService    = "to_service"
	paramFromIdentity = "from_identity"
	paramVerdict      = "verdict"
	paramPort         = "port"
	paramEvent        = "event"
	paramHTTPMethod   = "http_method"
	paramHTTPCode     = "http_code"
)

var params = []string{paramLast, paramSince, paramFollow, paramFromWorkload, paramToWorkload, paramNamespace,
	paramToService, paramFromIdentity, paramVerdict, paramPort, paramEvent, paramHTTPMethod, paramHTTPCode}

// values encodes q as GET /v1/flows parameters.
func (q Query) values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Last != 0 {
		v.Set(paramLast, strconv.Itoa(q.Last))
	}
	since := q.Since
	if q.Filter.Since.After(since) {
		since = q.Filter.Since
	}
	if !since.IsZero() {
		v.Set(paramSince, since.Format(time.RFC3339Nano))
	}
	if q.Follow {
		v.Set(paramFollow, "true")
	}
	fl := q.Filter
	set(paramFromWorkload, fl.FromWorkload)
	set(paramToWorkload, fl.ToWorkload)
	set(paramNamespace, fl.Namespace)
	set(paramToService, fl.ToService)
	set(paramFromIdentity, fl.FromIdentity)
	set(paramVerdict, string(fl.Verdict))
	if fl.Port != 0 {
		v.Set(paramPort, strconv.Itoa(int(fl.Port)))
	}
	set(paramEvent, string(fl.Event))
	set(paramHTTPMethod, fl.HTTPMethod)
	set(paramHTTPCode, fl.HTTPCode)
	return v
}

// parseQuery decodes GET /v1/flows parameters. Its errors name the
// parameter and what is wrong with it. The Query's Since is also its
// Filter's.
func parseQuery(v url.Values, now time.Time) (Query, error) {
	var q Query
	for k := range v {
		if !slices.Contains(params, k) {
			return Query{}, fmt.Errorf("unknown parameter %q: want one of %s", k, strings.Join(params, ", "))
		}
	}
	var err error
	if s := v.Get(paramLast); s != "" {
		if q.Last, err = strconv.Atoi(s); err != nil || q.Last < 0 {
			return Query{}, fmt.Errorf("%s=%q: want a number of flows, 0 or more", paramLast, s)
		}
	}
	if s := v.Get(paramSince); s != "" {
		if q.Since, err = ParseSince(s, now); err != nil {
			return Query{}, fmt.Errorf("%s=%q: %w", paramSince, s, err)
		}
		q.Filter.Since = q.Since
	}
	if s := v.Get(paramFollow); s != "" {
		if q.Follow, err = strconv.ParseBool(s); err != nil {
			return Query{}, fmt.Errorf("%s=%q: want true or false", paramFollow, s)
		}
	}
	fl := &q.Filter
	fl.FromWorkload, fl.ToWorkload = v.Get(paramFromWorkload), v.Get(paramToWorkload)
	fl.Namespace, fl.ToService, fl.FromIdentity = v.Get(paramNamespace), v.Get(paramToService), v.Get(paramFromIdentity)
	for _, w := range []struct{ param, value string }{{paramFromWorkload, fl.FromWorkload}, {paramToWorkload, fl.ToWorkload}} {
		if w.value != "" {
			if err := flow.CheckWorkload(w.value); err != nil {
				return Query{}, fmt.Errorf("%s: %w", w.param, err)
			}
		}
	}
	if fl.FromIdentity != "" {
		if err := flow.CheckIdentity(fl.FromIdentity); err != nil {
			return Query{}, fmt.Errorf("%s: %w", paramFromIdentity, err)
		}
	}
	if s := v.Get(paramVerdict); s != "" {
		if fl.Verdict, err = flow.ParseVerdict(s); err != nil {
			return Query{}, fmt.Errorf("%s: %w", paramVerdict, err)
		}
	}
	if s := v.Get(paramPort); s != "" {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || p == 0 {
			return Query{}, fmt.Errorf("%s=%q: want a port, 1 to 65535", paramPort, s)
		}
		fl.Port = uint16(p)
	}
	if s := v.Get(paramEvent); s != "" {
		if fl.Event, err = flow.ParseEvent(s); err != nil {
			return Query{}, fmt.Errorf("%s: %w", paramEvent, err)
		}
	}
	if s := v.Get(paramHTTPMethod); s != "" {
		if err := flow.CheckHTTPMethod(s); err != nil {
			return Query{}, fmt.Errorf("%s: %w", paramHTTPMethod, err)
		}
		fl.HTTPMethod = s
	}
	if s := v.Get(paramHTTPCode); s != "" {
		if err := flow.CheckHTTPCode(s); err != nil {
			return Query{}, fmt.Errorf("%s: %w", paramHTTPCode, err)
		}
		fl.HTTPCode = s
	}
	return q, nil
}

// ParseSince parses a start time given by a user: an RFC 3339 time, or a
// duration (as time.ParseDuration reads it) meaning that long before now.
func ParseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return time.Time{}, errors.New("want an RFC 3339 time (2026-03-01T12:00:00Z) or a duration ago (90s, 5m, 1h)")
	}
	if d <= 0 {
		return time.Time{}, errors.New("want a positive duration: how long ago to start")
	}
	return now.Add(-d), nil
}
