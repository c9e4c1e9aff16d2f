module github.com/nvblk/nvblk

go 1.26
