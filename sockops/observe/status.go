// Package observe is the agent's local API: flows and status served over
// a unix socket only root can open, and the client `sluice observe` and
// `sluice status` use.
package observe

import "time"

// Status is the agent's health at a glance. Its JSON form is what
// `sluice status -o json` prints; fields are added, never renamed.
type Status struct {
	Node      string    `json:"node"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	XDS       XDS       `json:"xds"`
	Workloads int       `json:"workloads"` // local workloads with a cgroup
	Services  int       `json:"services"`  // service VIP:port entries in force
	Backends  int       `json:"backends"`  // usable endpoints over all services
	Policies  int       `json:"policies"`  // policy rules in force
	Maps      []MapFill `json:"maps"`
	Dataplane Dataplane `json:"dataplane"`
	Flows     Flows     `json:"flows"`
	FastPath  FastPath  `json:"fast_path"`
}

// XDS is the state of the agent's xDS stream.
type XDS struct {
	Server    string            `json:"server"`
	Mode      string            `json:"mode"` // "delta" or "sotw"
	Connected bool              `json:"connected"`
	Since     time.Time         `json:"since"`   // when Connected last changed; zero until the first stream opened
	Applied   map[string]string `json:"applied"` // type URL → version last applied
	LastNACK  *NACK             `json:"last_nack,omitempty"`
	NACKs     NACKs             `json:"nacks"`
	// Reconnects counts the stream attempts after the first, failed
	// ones included: it grows while the control plane is unreachable.
	Reconnects int    `json:"reconnects"`
	LastError  string `json:"last_error,omitempty"` // why the last stream ended
}

// NACKs counts the responses the agent refused since it started, by
// reason.
type NACKs struct {
	Capacity int `json:"capacity"` // the state did not fit the dataplane's maps: raise the capacity
	Invalid  int `json:"invalid"`  // anything else: the control plane's input needs fixing
}

// Dataplane is what the agent's applies did to the kernel maps.
type Dataplane struct {
	// EntriesWritten counts the service and backend map entries written
	// or deleted since the agent started, adopting its predecessor's
	// pins included: it stays put while nothing changes.
	EntriesWritten uint64 `json:"entries_written"`
}

// NACK is the last response the agent refused.
type NACK struct {
	TypeURL string    `json:"type_url"`          // the type's short name: LDS, CDS, EDS or RDS
	Version string    `json:"version,omitempty"` // the response's version, if the server gave one
	Error   string    `json:"error"`
	Time    time.Time `json:"time"`
}

// MapFill is how full one BPF map is.
type MapFill struct {
	Name     string `json:"name"`
	Entries  int    `json:"entries"`
	Capacity int    `json:"capacity"`
}

// Flows counts flow records and the events lost on their way.
type Flows struct {
	Stored          int    `json:"stored"`           // records held in memory now
	Capacity        int    `json:"capacity"`         // the most the agent holds
	Total           uint64 `json:"total"`            // records made since the agent started
	LostKernel      uint64 `json:"lost_kernel"`      // events the ring buffer had no room for
	LostSubscribers uint64 `json:"lost_subscribers"` // records slow `observe --follow` clients missed
	LostProxy       uint64 `json:"lost_proxy"`       // request records the L7 proxy dropped: its buffer was full, or the agent refused them
}

// FastPath counts the same-node fast path's work.
type FastPath struct {
	Default        string `json:"default"`         // the node's default: "on" or "off"
	Registered     uint64 `json:"registered"`      // sockets put on the fast path
	Active         int    `json:"active"`          // sockets on it now
	Redirected     uint64 `json:"redirected"`      // bytes it carried
	Full           uint64 `json:"full"`            // sockets left on the normal path: the map was full
	Fallbacks      uint64 `json:"fallbacks"`       // connections left on the normal path: their peer was not ready
	SpliceExcluded uint64 `json:"splice_excluded"` // connections left on the normal path: a workload reads with splice(2)
}
