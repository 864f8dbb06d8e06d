# Demo role "web": reads the web application's secrets only.
path "secret/data/web/*" {
  capabilities = ["read"]
}
