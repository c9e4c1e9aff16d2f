package pmem_test

import "github.com/nvblk/nvblk/internal/cacheflush"

func reloadEnv() { cacheflush.ReloadEnv() }
