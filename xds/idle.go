package xds

import (
	"runtime/debug"
	"runtime/metrics"
)

// Heap growth that makes an idle client collect garbage: more than a
// quarter of the live heap, and at least minIdleGrowth.
const minIdleGrowth = 4 << 20

// garbageGrown reports whether the heap holds enough garbage since the
// last collection (objects is the heap's objects, live and dead; live what
// the last collection kept) to be worth collecting now.
func garbageGrown(live, objects uint64) bool {
	return objects > live && objects-live > max(live/4, minIdleGrowth)
}

var heapSamples = []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}

// collectIfGrown runs the garbage collector in the background if the heap
// grew enough since the last collection (Options.CollectWhenIdle) and no
// collection started this way is still running. It also returns the freed
// memory to the kernel: the runtime would otherwise keep pages for a heap
// twice the live one, which the next changes may never need.
func (c *Client) collectIfGrown() {
	s := make([]metrics.Sample, len(heapSamples))
	copy(s, heapSamples)
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return
	}
	if !garbageGrown(s[0].Value.Uint64(), s[1].Value.Uint64()) || c.collecting.Swap(true) {
		return
	}
	go func() {
		defer c.collecting.Store(false)
		debug.FreeOSMemory()
	}()
}
