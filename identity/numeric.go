package identity

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Numeric identities are the 32-bit numbers the dataplane's maps and the
// TCP option carry for a SPIFFE ID. They must mean the same on every node
// that sees the same xDS, and across agent restarts, so they are a function
// of the set of SPIFFE IDs the control plane describes and nothing else:
//
//   - 0 is Unknown: a connection whose source is not a mesh workload. No
//     SPIFFE ID ever gets it.
//   - 1 to FirstDerived-1 are given by the control plane (workload
//     metadata "identity"), which then owns their uniqueness.
//   - FirstDerived and up are derived from the SPIFFE ID by hashing, for
//     IDs the control plane gives no number.
//
// A derived number is the first of the ID's probe sequence (SHA-256 of the
// ID and a counter, folded into the derived range) that no other ID claims
// at an earlier probe, or at the same probe with a smaller ID. Collisions
// are rare (a mesh of 10,000 IDs has one with a chance of about 2%), are
// settled the same way on every node, and only move an ID when a new one
// collides with it and sorts before it.
const (
	Unknown      uint32 = 0
	FirstDerived uint32 = 1 << 31
)

// Request asks for the numeric identity of a SPIFFE ID; Given is the
// number the control plane gave it, or 0.
type Request struct {
	SPIFFEID string
	Given    uint32
}

// maxProbes bounds the probe sequence; at any realistic number of IDs
// (far below 2^31) a free number comes within a few probes.
const maxProbes = 64

// Assign gives each SPIFFE ID of reqs its numeric identity. A SPIFFE ID may
// be requested several times (it has several endpoints), but always with
// the same given number; two IDs may not be given the same number, and a
// given number must be below FirstDerived. The error names the offending
// IDs or number; on error nothing is assigned.
func Assign(reqs []Request) (map[string]uint32, error) {
	given := map[string]uint32{}
	owner := map[uint32]string{}
	var derive []string
	for _, r := range reqs {
		if _, err := ParseWorkloadID(r.SPIFFEID); err != nil {
			return nil, err
		}
		if n, seen := given[r.SPIFFEID]; seen {
			if n != r.Given {
				return nil, fmt.Errorf("identity: %s is given two numbers, %d and %d", r.SPIFFEID, min(n, r.Given), max(n, r.Given))
			}
			continue
		}
		given[r.SPIFFEID] = r.Given
		switch {
		case r.Given == Unknown:
			derive = append(derive, r.SPIFFEID)
		case r.Given >= FirstDerived:
			return nil, fmt.Errorf("identity: %s is given %d; numbers the control plane gives must be 1..%d (%d and up are derived)", r.SPIFFEID, r.Given, FirstDerived-1, FirstDerived)
		default:
			if other, taken := owner[r.Given]; taken {
				a, b := min(other, r.SPIFFEID), max(other, r.SPIFFEID)
				return nil, fmt.Errorf("identity: %s and %s are both given %d", a, b, r.Given)
			}
			owner[r.Given] = r.SPIFFEID
		}
	}
	out := make(map[string]uint32, len(given))
	for id, n := range given {
		if n != Unknown {
			out[id] = n
		}
	}
	derived, err := derived(derive)
	if err != nil {
		return nil, err
	}
	for id, n := range derived {
		out[id] = n
	}
	return out, nil
}

// derived settles the derived numbers of ids (distinct): probe by probe,
// each free number goes to the smallest ID that reaches it first.
func derived(ids []string) (map[string]uint32, error) {
	slices.Sort(ids)
	out := make(map[string]uint32, len(ids))
	taken := make(map[uint32]bool, len(ids))
	pending := ids
	for k := 0; len(pending) > 0; k++ {
		if k == maxProbes {
			return nil, fmt.Errorf("identity: no free number for %s after %d probes", pending[0], maxProbes)
		}
		var next []string
		for _, id := range pending { // sorted: the smaller ID wins a tie
			n := probe(id, k)
			if taken[n] {
				next = append(next, id)
				continue
			}
			taken[n] = true
			out[id] = n
		}
		pending = next
	}
	return out, nil
}

// probe is the k-th number of id's probe sequence, in the derived range.
func probe(id string, k int) uint32 {
	h := sha256.New()
	h.Write([]byte(id))
	var c [4]byte
	binary.BigEndian.PutUint32(c[:], uint32(k))
	h.Write(c[:])
	sum := h.Sum(nil)
	return FirstDerived | binary.BigEndian.Uint32(sum[:4])&(FirstDerived-1)
}

// WorkloadID is a SPIFFE ID of the form Sluice gives workloads:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
type WorkloadID struct {
	TrustDomain, Namespace, ServiceAccount string
}

func (w WorkloadID) String() string {
	return "spiffe://" + w.TrustDomain + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// ParseWorkloadID parses and checks a workload's SPIFFE ID.
func ParseWorkloadID(s string) (WorkloadID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return WorkloadID{}, fmt.Errorf("identity: %q is not a SPIFFE ID: %w", s, err)
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return WorkloadID{}, fmt.Errorf("identity: %q is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)", s)
	}
	return WorkloadID{TrustDomain: id.TrustDomain().Name(), Namespace: parts[1], ServiceAccount: parts[3]}, nil
}
