package pmem

// MappingForTest returns the memory mapping behind a device built by this
// package (nil otherwise). It exists for benchmarks that compare the
// device layer with a plain copy into the same mapping; never write
// through it in real code.
func MappingForTest(d Device) []byte {
	if m, ok := d.(*mapDev); ok {
		return m.data
	}
	return nil
}
