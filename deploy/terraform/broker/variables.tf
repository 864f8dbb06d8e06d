# Set by broker.auto.tfvars.json, which `make package` writes from deploy/STAGE.toml,
# .chalice/config.json and .chalice/policy-STAGE.json: change those and package again
# rather than editing the generated values.

variable "stage" {
  type = string
}

variable "function_name" {
  type = string
}

variable "role_name" {
  description = "The function's execution role; the member accounts' reader roles trust it by name."
  type        = string
}

variable "function" {
  type = object({
    runtime              = string
    handler              = string
    memory_size          = number
    timeout              = number
    architectures        = list(string)
    reserved_concurrency = number
    tracing_mode         = string
    snap_start           = string # PublishedVersions (SnapStart on) or None
    alias                = string # the alias API Gateway invokes
  })
}

variable "environment" {
  description = "The function's environment (BROKER_*), from the values file."
  type        = map(string)
}

variable "function_policy" {
  description = "The function's IAM policy (.chalice/policy-STAGE.json), as JSON."
  type        = string
}

variable "api_name" {
  type = string
}

variable "api_stage" {
  type = string
}

variable "api_endpoint_type" {
  type = string
}

variable "api_policy" {
  description = "The API's resource policy (a PRIVATE API: only the listed VPC endpoints), as JSON; null for none."
  type        = string
  default     = null
}

variable "throttle_rate_limit" {
  type = number
}

variable "throttle_burst_limit" {
  type = number
}

variable "tables" {
  description = "The audit, replay and quarantine tables, as chalicelib/audit_schema.py defines them."
  type = map(object({
    name          = string
    hash_key      = string
    attributes    = map(string)
    ttl_attribute = string
    indexes = list(object({
      name            = string
      hash_key        = string
      range_key       = string
      projection_type = string
    }))
  }))
}

variable "secret_name" {
  type = string
}

variable "log_group_name" {
  type = string
}

variable "log_retention_days" {
  type = number
}

variable "alarms" {
  description = "The alarms (deploy/monitoring.py); thresholds from the values file."
  type = map(object({
    name               = string
    description        = string
    namespace          = string
    metric             = string
    dimensions         = map(string)
    statistic          = string
    extended_statistic = string
    period             = number
    evaluation_periods = number
    threshold          = number
  }))
}

variable "alarm_topic_arn" {
  description = "The SNS topic the alarms notify; null for alarms without actions."
  type        = string
  default     = null
}

variable "trust_rule" {
  type = object({ name = string, description = string, event_pattern = string })
}

variable "trust_rule_targets" {
  type = map(string)
}

variable "dashboard_name" {
  type = string
}

variable "dashboard_body" {
  description = "The dashboard's JSON; the region goes where it says $${AWS::Region}."
  type        = string
}
