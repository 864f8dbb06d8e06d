# Demo role "batch": reads the batch jobs' secrets only.
path "secret/data/batch/*" {
  capabilities = ["read"]
}
