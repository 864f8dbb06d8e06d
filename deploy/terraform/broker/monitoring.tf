# Alarms and the dashboard (deploy/monitoring.py defines them for both packages; the
# thresholds are in deploy/STAGE.toml and explained in docs/operations.md).

resource "aws_cloudwatch_metric_alarm" "alarm" {
  for_each = var.alarms

  alarm_name          = each.value.name
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  extended_statistic  = each.value.extended_statistic
  period              = each.value.period
  evaluation_periods  = each.value.evaluation_periods
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  ok_actions          = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
}

resource "aws_cloudwatch_dashboard" "broker" {
  dashboard_name = var.dashboard_name
  # the function's ARN names the region (arn:aws:lambda:REGION:...) in every provider version
  dashboard_body = replace(var.dashboard_body, "$${AWS::Region}", split(":", aws_lambda_function.api_handler.arn)[3])
}

# iam:UpdateAssumeRolePolicy seen by CloudTrail: the alarm topic is told at once, and the
# trust_policy_changed alarm counts the rule's matches (docs/accounts-and-containers.md).
resource "aws_cloudwatch_event_rule" "trust_policy_changed" {
  name          = var.trust_rule.name
  description   = var.trust_rule.description
  event_pattern = var.trust_rule.event_pattern
}

resource "aws_cloudwatch_event_target" "trust_policy_changed" {
  for_each  = var.trust_rule_targets # {"alarm-topic": the alarm topic}, or none without one
  rule      = aws_cloudwatch_event_rule.trust_policy_changed.name
  target_id = each.key
  arn       = each.value
}
