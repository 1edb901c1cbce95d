// Records keyed by data (connection, child and SA names), not by a fixed set of fields.
//
// V8 gives a plain object a hidden class (map) per set of keys it has seen added in order, linked as transitions from
// the empty object's map. An object whose first key is a peer's name adds one transition to that shared map per
// peer; past ~1,500 of them (V8's kMaxNumberOfTransitions) the map is full and every object built afterwards by
// adding properties to `{}` (or from an object literal first evaluated then) gets a map and descriptor array of its
// own, ~200 B each, instead of sharing one: at 10,000 peers that was ~100,000 maps, 7 MiB of the heap
// (docs/footprint.md, "At scale"). A null-prototype object is created in dictionary mode: its keys are a hash
// table of its own and add no transitions. It also cannot confuse a name such as `__proto__` or `constructor`
// with Object.prototype's members.
/** An empty record for data keys, in dictionary mode (see above). Enumerates in insertion order like `{}`. */
export function dict<T = unknown>(): Record<string, T> {
  return Object.create(null) as Record<string, T>
}
