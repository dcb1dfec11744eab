//go:build !crashpoints

package crash

// Enabled reports whether this build has crash points (the build tag
// crashpoints): this one has none.
const Enabled = false

// Point does nothing: this build has no crash points (see the package
// comment). It is empty so that the compiler inlines it away.
func Point(string) {}
