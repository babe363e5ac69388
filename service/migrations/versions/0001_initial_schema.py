"""Initial schema: every table as service/models.py defined it before migrations existed.

A database made by ``create_all`` before this revision is adopted at it (service.db._adopt_unversioned).

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:03:56.905081
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("schedule",
    # one row, id 1 (a model default): no sequence, as create_all made it
    sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
    sa.Column("cron", sa.String(length=64), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_table("user",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("username", sa.String(length=64), nullable=False),
    sa.Column("password_hash", sa.String(length=255), nullable=False),
    sa.Column("role", sa.Enum("user", "operator", name="role"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_user_username"), "user", ["username"], unique=True)
    op.create_table("conversation",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("title", sa.String(length=200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["user_id"], ["user.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_conversation_updated_at"), "conversation", ["updated_at"], unique=False)
    op.create_index(op.f("ix_conversation_user_id"), "conversation", ["user_id"], unique=False)
    op.create_table("ranking",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("alternative_group", sa.Integer(), nullable=False),
    sa.Column("message_ids", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["user_id"], ["user.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("user_id", "alternative_group", name="uq_ranking_user_group")
    )
    op.create_index(op.f("ix_ranking_alternative_group"), "ranking", ["alternative_group"], unique=False)
    op.create_index(op.f("ix_ranking_user_id"), "ranking", ["user_id"], unique=False)
    op.create_table("trainingrun",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("status", sa.Enum("queued", "running", "succeeded", "failed", name="runstatus"), nullable=False),
    sa.Column("trigger", sa.String(length=32), nullable=False),
    sa.Column("user_ids", sa.JSON(), nullable=True),
    sa.Column("requested_by", sa.Integer(), nullable=True),
    sa.Column("progress", sa.Float(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("worker_id", sa.String(length=128), nullable=True),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["requested_by"], ["user.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_trainingrun_status"), "trainingrun", ["status"], unique=False)
    op.create_table("adapterversion",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("status", sa.Enum("candidate", "promoted", "rejected", "retired", name="adapterstatus"), nullable=False),
    sa.Column("path", sa.String(length=1024), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("training_run_id", sa.Integer(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["training_run_id"], ["trainingrun.id"], ),
    sa.ForeignKeyConstraint(["user_id"], ["user.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("user_id", "version", name="uq_adapter_user_version")
    )
    op.create_index(op.f("ix_adapterversion_user_id"), "adapterversion", ["user_id"], unique=False)
    op.create_table("trainingsnapshot",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("run_id", sa.Integer(), nullable=True),
    sa.Column("sha256", sa.String(length=64), nullable=False),
    sa.Column("feedback_ids", sa.JSON(), nullable=False),
    sa.Column("ranking_ids", sa.JSON(), nullable=False),
    sa.Column("stats", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["run_id"], ["trainingrun.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_trainingsnapshot_run_id"), "trainingsnapshot", ["run_id"], unique=False)
    op.create_table("activeadapter",
    sa.Column("scope", sa.String(length=64), nullable=False),
    sa.Column("adapter_version_id", sa.Integer(), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["adapter_version_id"], ["adapterversion.id"], ),
    sa.PrimaryKeyConstraint("scope")
    )
    op.create_table("message",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("conversation_id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("role", sa.String(length=16), nullable=False),
    sa.Column("content", sa.Text(), nullable=False),
    sa.Column("parent_id", sa.Integer(), nullable=True),
    sa.Column("alternative_group", sa.Integer(), nullable=True),
    sa.Column("alternative_index", sa.Integer(), nullable=False),
    sa.Column("adapter_version_id", sa.Integer(), nullable=True),
    sa.Column("adapter_label", sa.String(length=64), nullable=True),
    sa.Column("policy", sa.String(length=32), nullable=True),
    sa.Column("temperature", sa.Float(), nullable=True),
    sa.Column("top_p", sa.Float(), nullable=True),
    sa.Column("max_new_tokens", sa.Integer(), nullable=True),
    sa.Column("finish_reason", sa.String(length=16), nullable=True),
    sa.Column("prompt_tokens", sa.Integer(), nullable=False),
    sa.Column("completion_tokens", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["adapter_version_id"], ["adapterversion.id"], ),
    sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"], ),
    sa.ForeignKeyConstraint(["parent_id"], ["message.id"], ),
    sa.ForeignKeyConstraint(["user_id"], ["user.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_message_alternative_group"), "message", ["alternative_group"], unique=False)
    op.create_index(op.f("ix_message_conversation_id"), "message", ["conversation_id"], unique=False)
    op.create_index(op.f("ix_message_parent_id"), "message", ["parent_id"], unique=False)
    op.create_index(op.f("ix_message_user_id"), "message", ["user_id"], unique=False)
    op.create_table("trainingresult",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("run_id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=True),
    sa.Column("status", sa.Enum("queued", "running", "succeeded", "failed", name="runstatus"), nullable=False),
    sa.Column("adapter_version_id", sa.Integer(), nullable=True),
    sa.Column("promoted", sa.Boolean(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["adapter_version_id"], ["adapterversion.id"], ),
    sa.ForeignKeyConstraint(["run_id"], ["trainingrun.id"], ),
    sa.ForeignKeyConstraint(["user_id"], ["user.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_trainingresult_run_id"), "trainingresult", ["run_id"], unique=False)
    op.create_table("feedback",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("message_id", sa.Integer(), nullable=False),
    sa.Column("rating", sa.Enum("up", "down", name="rating"), nullable=False),
    sa.Column("reasons", sa.JSON(), nullable=False),
    sa.Column("comment", sa.Text(), nullable=True),
    sa.Column("source", sa.String(length=32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["message_id"], ["message.id"], ),
    sa.ForeignKeyConstraint(["user_id"], ["user.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("user_id", "message_id", name="uq_feedback_user_message")
    )
    op.create_index(op.f("ix_feedback_message_id"), "feedback", ["message_id"], unique=False)
    op.create_index(op.f("ix_feedback_updated_at"), "feedback", ["updated_at"], unique=False)
    op.create_index(op.f("ix_feedback_user_id"), "feedback", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_feedback_user_id"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_updated_at"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_message_id"), table_name="feedback")
    op.drop_table("feedback")
    op.drop_index(op.f("ix_trainingresult_run_id"), table_name="trainingresult")
    op.drop_table("trainingresult")
    op.drop_index(op.f("ix_message_user_id"), table_name="message")
    op.drop_index(op.f("ix_message_parent_id"), table_name="message")
    op.drop_index(op.f("ix_message_conversation_id"), table_name="message")
    op.drop_index(op.f("ix_message_alternative_group"), table_name="message")
    op.drop_table("message")
    op.drop_table("activeadapter")
    op.drop_index(op.f("ix_trainingsnapshot_run_id"), table_name="trainingsnapshot")
    op.drop_table("trainingsnapshot")
    op.drop_index(op.f("ix_adapterversion_user_id"), table_name="adapterversion")
    op.drop_table("adapterversion")
    op.drop_index(op.f("ix_trainingrun_status"), table_name="trainingrun")
    op.drop_table("trainingrun")
    op.drop_index(op.f("ix_ranking_user_id"), table_name="ranking")
    op.drop_index(op.f("ix_ranking_alternative_group"), table_name="ranking")
    op.drop_table("ranking")
    op.drop_index(op.f("ix_conversation_user_id"), table_name="conversation")
    op.drop_index(op.f("ix_conversation_updated_at"), table_name="conversation")
    op.drop_table("conversation")
    op.drop_index(op.f("ix_user_username"), table_name="user")
    op.drop_table("user")
    op.drop_table("schedule")
    # PostgreSQL keeps the enum types that create_table made; drop them too.
    for enum in ("role", "rating", "runstatus", "adapterstatus"):
        sa.Enum(name=enum).drop(op.get_bind(), checkfirst=True)
