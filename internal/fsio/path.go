package fsio

import "path/filepath"

func filepathDir(p string) string { return filepath.Dir(filepath.Clean(p)) }
