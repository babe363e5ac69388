"""Operator routes (placeholder until the learning work lands)."""
from fastapi import APIRouter

router = APIRouter()
