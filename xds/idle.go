package xds

import (
	"runtime/debug"
	"runtime/metrics"
)

// Heap growth that makes an idle client collect garbage: more than an
// eighth of the live heap, and at least minIdleGrowth; once it has been
// quiet for settleAfter times CollectWhenIdle, more than minSettledGrowth.
const (
	minIdleGrowth    = 2 << 20
	minSettledGrowth = 1 << 20
	settleAfter      = 20
)

// garbageGrown reports whether the heap holds enough garbage since the
// last collection (objects is the heap's objects, live and dead; live what
// the last collection kept) to be worth collecting now; settled is whether
// the stream has been quiet for long.
func garbageGrown(live, objects uint64, settled bool) bool {
	limit := max(live/8, minIdleGrowth)
	if settled {
		limit = minSettledGrowth
	}
	return objects > live && objects-live > limit
}

var heapSamples = []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}

// collectIfGrown runs the garbage collector in the background if the heap
// grew enough since the last collection (Options.CollectWhenIdle) and no
// collection started this way is still running. It also returns the freed
// memory to the kernel: the runtime would otherwise keep pages for a heap
// twice the live one, which the next changes may never need.
func (c *Client) collectIfGrown(settled bool) {
	s := make([]metrics.Sample, len(heapSamples))
	copy(s, heapSamples)
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return
	}
	if !garbageGrown(s[0].Value.Uint64(), s[1].Value.Uint64(), settled) || c.collecting.Swap(true) {
		return
	}
	go func() {
		defer c.collecting.Store(false)
		debug.FreeOSMemory()
	}()
}
